//! The spliced connections of one core, so a config swap can cut the ones it no longer allows.
//!
//! A route removed, a backendRef dropped (a ReferenceGrant revoked, a Service deleted), a
//! listener gone: the namespace isolation the Gateway API promises must hold for connections
//! already open, not only for new ones. After every install the core checks each open stream
//! against the new tables: its port, listener, route and backend must still be there together;
//! otherwise the stream is reset. Endpoint changes and certificate rotation do not cut a TCP
//! connection (its endpoint answers or fails on its own); a UDP session, which nothing would
//! ever tell that its endpoint is gone, also ends when its endpoint leaves the backend.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use portcullis_api::config::Transport;

use crate::route::Snapshot;
use crate::signal::Signal;

/// What a spliced connection was allowed by.
#[derive(Debug, Clone)]
pub struct StreamKey {
    /// Number and transport: a UDP session and a TCP connection may share a port number.
    pub port: (u16, Transport),
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub backend: Arc<str>,
    /// For a UDP session, the endpoint it sends to: it must stay among the backend's.
    pub endpoint: Option<SocketAddr>,
}

impl StreamKey {
    /// Whether `snapshot` still routes this key's connections to its backend.
    fn allowed_by(&self, snapshot: &Snapshot) -> bool {
        let Some(port) = snapshot.port_of(self.port.0, self.port.1) else {
            return false;
        };
        let Some(listener) = port.listeners.iter().find(|l| l.name == self.listener) else {
            return false;
        };
        let Some(route) = listener.stream_routes.route(&self.route) else {
            return false;
        };
        route.backends.shares.iter().any(|share| {
            share.target.as_ref().is_ok_and(|index| {
                snapshot.backends.get(*index as usize).is_some_and(|b| {
                    b.name == self.backend && self.endpoint.is_none_or(|e| b.endpoints.contains(&e))
                })
            })
        })
    }
}

#[derive(Debug, Default)]
pub struct OpenStreams {
    next_id: Cell<u64>,
    open: RefCell<HashMap<u64, (StreamKey, Rc<Signal>)>>,
}

impl OpenStreams {
    /// Registers a stream; its signal fires when a config revokes it. Dropping the
    /// registration forgets the stream.
    pub fn register(self: &Rc<Self>, key: StreamKey) -> Registration {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let revoked = Rc::new(Signal::default());
        self.open.borrow_mut().insert(id, (key, revoked.clone()));
        Registration {
            streams: self.clone(),
            id,
            revoked,
        }
    }

    /// Fires the signal of every stream `snapshot` no longer allows; returns how many.
    pub fn revoke_disallowed(&self, snapshot: &Snapshot) -> usize {
        let mut revoked = 0;
        for (key, signal) in self.open.borrow().values() {
            if !signal.is_fired() && !key.allowed_by(snapshot) {
                signal.fire();
                revoked += 1;
            }
        }
        revoked
    }

    pub fn len(&self) -> usize {
        self.open.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Registration {
    streams: Rc<OpenStreams>,
    id: u64,
    pub revoked: Rc<Signal>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.streams.open.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use portcullis_api::CompiledConfig;
    use portcullis_api::config::{
        Backend, BackendProtocol, BackendTarget, Listener, Port, PortProtocol, StreamRoute,
        WeightedBackend,
    };

    use super::*;

    fn config(route: &str, backend: &str) -> Snapshot {
        let mut config = CompiledConfig::empty(1);
        config.backends.push(Backend {
            name: backend.into(),
            protocol: BackendProtocol::Http1,
            endpoints: vec!["127.0.0.1:9".parse().unwrap()],
            tls: None,
        });
        config.ports.push(Port {
            port: 5432,
            protocol: PortProtocol::Tcp,
            client_validation: None,
            session_resumption_disabled: false,
            listeners: vec![Listener {
                name: "tcp".into(),
                hostname: None,
                certificates: vec![],
                routes: vec![],
                passthrough: false,
                stream_routes: vec![StreamRoute {
                    name: route.into(),
                    hostnames: vec![],
                    backends: vec![WeightedBackend {
                        weight: 1,
                        target: BackendTarget::Backend(backend.into()),
                        filters: vec![],
                    }],
                }],
            }],
        });
        Snapshot::build(&config).unwrap()
    }

    #[test]
    fn only_streams_the_new_config_no_longer_routes_are_revoked() {
        let streams = Rc::new(OpenStreams::default());
        let key = |route: &str, backend: &str| StreamKey {
            port: (5432, Transport::Tcp),
            listener: "tcp".into(),
            route: route.into(),
            backend: backend.into(),
            endpoint: None,
        };
        let kept = streams.register(key("ns/db", "ns/db:5432"));
        let other_route = streams.register(key("ns/old", "ns/db:5432"));
        let other_backend = streams.register(key("ns/db", "ns/gone:5432"));
        let other_port = streams.register(StreamKey {
            port: (1, Transport::Tcp),
            ..key("ns/db", "ns/db:5432")
        });
        // A session pinned to an endpoint the backend no longer has.
        let gone_endpoint = streams.register(StreamKey {
            endpoint: Some("127.0.0.1:10".parse().unwrap()),
            ..key("ns/db", "ns/db:5432")
        });
        let kept_endpoint = streams.register(StreamKey {
            endpoint: Some("127.0.0.1:9".parse().unwrap()),
            ..key("ns/db", "ns/db:5432")
        });
        // The same number over UDP is another port, which the config does not have.
        let other_transport = streams.register(StreamKey {
            port: (5432, Transport::Udp),
            ..key("ns/db", "ns/db:5432")
        });
        assert_eq!(streams.len(), 7);

        assert_eq!(streams.revoke_disallowed(&config("ns/db", "ns/db:5432")), 5);
        assert!(!kept.revoked.is_fired());
        assert!(!kept_endpoint.revoked.is_fired());
        assert!(gone_endpoint.revoked.is_fired());
        assert!(other_route.revoked.is_fired());
        assert!(other_backend.revoked.is_fired());
        assert!(other_port.revoked.is_fired());
        assert!(other_transport.revoked.is_fired());
        // Already revoked streams are not counted twice; closed ones are forgotten.
        assert_eq!(streams.revoke_disallowed(&config("ns/db", "ns/db:5432")), 0);
        drop((other_route, other_backend, other_port, other_transport));
        drop((gone_endpoint, kept_endpoint));
        assert_eq!(streams.len(), 1);
        drop(kept);
        assert!(streams.is_empty());
    }
}
