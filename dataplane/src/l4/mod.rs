//! Ports that carry whole connections rather than HTTP requests: TLS ports (TLSRoute), routed
//! by the server name of their ClientHello, and TCP ports (TCPRoute), whose one listener's
//! first route takes every connection.
//!
//! A passthrough listener replays the ClientHello to the backend and then copies bytes both
//! ways without looking at them: the backend terminates TLS. A terminating listener finishes
//! the handshake here with its certificates and copies the decrypted stream to the backend,
//! over a new TLS session when the backend has a BackendTLSPolicy (no ALPN offered: the
//! proxy does not know what the bytes speak).
//! A TCP port copies from the first byte. Each connection is counted on its route like a
//! request: 2xx once spliced, 5xx when no backend could take it; with the access log on, it
//! gets one line when it ends.

pub mod open_streams;
pub mod splice;
pub mod udp;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use portcullis_api::config::{PortProtocol, Transport};

use crate::access_log::StreamEntry;
use crate::metrics::{RouteCounters, increment};
use crate::proxy::backend_tls::CoreTls;
use crate::proxy::upstream::{ConnectError, connect_opaque};
use crate::shard::{Installed, Shard};
use crate::tls::client_hello::{HelloFacts, read_client_hello};
use open_streams::{Registration, StreamKey};
use splice::splice;

/// Serves one connection on a TLS or TCP port, and logs it when the access log is on.
pub async fn serve_stream_port(
    shard: Rc<Shard>,
    stream: TcpStream,
    port: u16,
    protocol: PortProtocol,
) {
    let started = Instant::now();
    let mut entry = StreamEntry {
        peer: stream.peer_addr().ok(),
        port,
        protocol: if protocol == PortProtocol::Tls {
            "tls"
        } else {
            "tcp"
        },
        ..StreamEntry::default()
    };
    route_and_splice(&shard, stream, port, protocol, &mut entry).await;
    if let Some(log) = &shard.access_log {
        log.stream(&entry, started.elapsed());
    }
}

/// Counts `status` on the route and notes it for the log.
pub(crate) fn outcome(counters: &RouteCounters, entry: &mut StreamEntry, status: u16) {
    counters.record(status);
    entry.status = status;
}

async fn route_and_splice(
    shard: &Rc<Shard>,
    mut stream: TcpStream,
    port: u16,
    protocol: PortProtocol,
    entry: &mut StreamEntry,
) {
    // The hello and, where TLS terminates here, the whole handshake share one deadline.
    let handshake_deadline = Instant::now()
        + Duration::from_millis(shard.current().snapshot.settings.header_read_timeout_ms);
    let mut bytes = Vec::new();
    let HelloFacts {
        server_name,
        prefers_chacha20,
    } = if protocol == PortProtocol::Tls {
        let hello = async { Some(read_client_hello(&mut stream, &mut bytes).await) }
            .or(async {
                Timer::new(handshake_deadline.saturating_duration_since(Instant::now())).await;
                None
            })
            .await;
        match hello {
            Some(Ok(hello)) => hello,
            Some(Err(_)) | None => {
                increment(&shard.counters.tls_handshake_errors);
                entry.status = 400;
                return;
            }
        }
    } else {
        HelloFacts::default()
    };

    // Route on the tables current now; they are released before the long copy.
    entry.server_name = server_name.clone();
    let installed = shard.current();
    let settings = installed.snapshot.settings.clone();
    let Some(routed) = route_new_stream(
        shard,
        &installed,
        (port, Transport::Tcp),
        server_name.as_deref(),
        entry,
    ) else {
        return;
    };
    let tls_config = installed
        .tls
        .get(&port)
        .map(|configs| configs.for_client(prefers_chacha20).clone());
    // Where TLS terminates here, a BackendTLSPolicy re-encrypts the stream to the backend;
    // passthrough and TCP connections reach it byte for byte.
    let passthrough = routed.passthrough;
    let upstream_tls = if passthrough || protocol == PortProtocol::Tcp {
        None
    } else {
        installed
            .upstream_tls
            .get(routed.backend)
            .cloned()
            .flatten()
    };
    drop(installed);
    let counters = routed.counters.clone();
    let endpoint = routed.endpoint;
    let registration = routed.register(shard);

    let forward = Forward {
        endpoint,
        connect_timeout: Duration::from_millis(settings.upstream_connect_timeout_ms),
        idle_timeout: Duration::from_millis(settings.stream_idle_timeout_ms),
        client_fd: stream.as_raw_fd(),
        registration,
    };
    if passthrough || protocol == PortProtocol::Tcp {
        // The backend sees the connection from its first byte: the hello goes first.
        forward
            .connect_and_splice(stream, &bytes, None, &counters, entry)
            .await;
        return;
    }

    let Some(tls_config) = tls_config else {
        outcome(&counters, entry, 500);
        return;
    };
    let handshake = Box::pin(async { crate::tls::accept(tls_config, stream, bytes).await.ok() });
    let deadline = async {
        Timer::new(handshake_deadline.saturating_duration_since(Instant::now())).await;
        None
    };
    let Some(tls) = handshake.or(deadline).await else {
        increment(&shard.counters.tls_handshake_errors);
        entry.status = 400;
        return;
    };
    forward
        .connect_and_splice(tls, &[], upstream_tls.as_deref(), &counters, entry)
        .await;
}

/// Where a new stream (a TLS or TCP connection, a UDP session) goes.
pub(crate) struct Routed {
    port: (u16, Transport),
    listener: Arc<str>,
    passthrough: bool,
    route: Arc<str>,
    pub counters: Rc<RouteCounters>,
    backend: usize,
    backend_name: Arc<str>,
    pub endpoint: SocketAddr,
}

impl Routed {
    /// Registers the stream with its core, so a config that no longer routes it revokes it.
    pub fn register(self, shard: &Shard) -> Registration {
        self.register_with(shard, None)
    }

    /// Registers a UDP session, which a config also revokes when its endpoint leaves the
    /// backend: no reset would ever tell it the endpoint is gone.
    pub fn register_session(self, shard: &Shard) -> Registration {
        let endpoint = Some(self.endpoint);
        self.register_with(shard, endpoint)
    }

    fn register_with(self, shard: &Shard, endpoint: Option<SocketAddr>) -> Registration {
        shard.open_streams.register(StreamKey {
            port: self.port,
            listener: self.listener,
            route: self.route,
            backend: self.backend_name,
            endpoint,
        })
    }
}

/// Routes a new stream on `port` (its number and transport) under `installed`: the port's listener (by `server_name` on
/// TLS ports), its route, a backend by weight and the backend's next endpoint. When one is
/// missing, counts the outcome (404 no listener or route, 500 no usable backend reference,
/// 503 no endpoint) and notes it in `entry`.
pub(crate) fn route_new_stream(
    shard: &Shard,
    installed: &Installed,
    port: (u16, Transport),
    server_name: Option<&str>,
    entry: &mut StreamEntry,
) -> Option<Routed> {
    let Some(listener) = installed
        .snapshot
        .port_of(port.0, port.1)
        .and_then(|table| table.select_for_sni(server_name))
    else {
        outcome(&installed.unmatched, entry, 404);
        return None;
    };
    let Some(route) = listener.stream_routes.find(server_name) else {
        outcome(
            &installed.stats[listener.no_route_stat_slot as usize],
            entry,
            404,
        );
        return None;
    };
    entry.route = Some(route.name.clone());
    let counters = installed.stats[route.stat_slot as usize].clone();
    let backend = match route.backends.pick(shard.random()).map(|s| &s.target) {
        Some(Ok(backend)) => *backend as usize,
        // No backends, zero weights or an invalid reference: refused, as HTTP answers 500.
        Some(Err(_)) | None => {
            outcome(&counters, entry, 500);
            return None;
        }
    };
    let (Some(endpoint), Some(backend_name)) = (
        installed.next_endpoint(backend),
        installed
            .snapshot
            .backends
            .get(backend)
            .map(|b| b.name.clone()),
    ) else {
        outcome(&counters, entry, 503);
        return None;
    };
    entry.upstream = Some(endpoint);
    Some(Routed {
        port,
        listener: listener.name.clone(),
        passthrough: listener.passthrough,
        route: route.name.clone(),
        counters,
        backend,
        backend_name,
        endpoint,
    })
}

/// Where a routed connection goes, and the limits it is copied under.
struct Forward {
    endpoint: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// The client's TCP socket, reset together with the upstream one on an error.
    client_fd: RawFd,
    registration: Registration,
}

impl Forward {
    /// Connects to the backend (over TLS with `tls`), sends `replay` (bytes already read from
    /// the client) and then copies both ways until either side finishes or a new config
    /// revokes the route.
    async fn connect_and_splice<C>(
        self,
        client: C,
        replay: &[u8],
        tls: Option<&CoreTls>,
        counters: &RouteCounters,
        entry: &mut StreamEntry,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let mut upstream = match connect_opaque(self.endpoint, self.connect_timeout, tls).await {
            Ok(upstream) => upstream,
            Err(error) => {
                if let (ConnectError::Handshake(reason), Some(tls)) = (&error, tls) {
                    tls.log_failure(self.endpoint, reason);
                }
                outcome(counters, entry, 502);
                return;
            }
        };
        if !replay.is_empty() && upstream.write_all(replay).await.is_err() {
            outcome(counters, entry, 502);
            return;
        }
        outcome(counters, entry, 200);
        let upstream_fd = upstream.tcp().as_raw_fd();
        entry.spliced = Some(
            splice(
                client,
                upstream,
                self.idle_timeout,
                [self.client_fd, upstream_fd],
                self.registration.revoked.wait(),
            )
            .await,
        );
    }
}
