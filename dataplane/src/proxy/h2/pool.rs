//! This core's HTTP/2 connections to backends: one per endpoint (and TLS identity), shared by
//! every request the core sends there, multiplexed by h2. Like the HTTP/1.1 pool it belongs to
//! one core and is never touched by another.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;

use crate::metrics::{CoreCounters, UpstreamError};
use crate::proxy::backend_tls::CoreTls;
use crate::proxy::h2::io;
use crate::proxy::upstream::{ConnectError, PoolKey, UpstreamConn};

/// Streams per backend connection; h2 queues further requests until one ends. The backend's
/// own SETTINGS may lower it.
const MAX_STREAMS_PER_CONNECTION: usize = 256;
/// Flow-control windows toward backends: large enough that one stream's body is not held
/// back by round trips on a fast network.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

#[derive(Default)]
pub struct Http2Pool {
    senders: RefCell<HashMap<PoolKey, SendRequest<Bytes>>>,
}

/// Why no stream could be opened to a backend.
#[derive(Debug)]
pub enum OpenError {
    Connect(ConnectError),
    /// The TCP (and TLS) connection came up but HTTP/2 did not.
    Handshake(h2::Error),
}

impl OpenError {
    /// Counts the failure (and logs a failed TLS handshake under the backend's policy).
    pub fn record(&self, counters: &CoreCounters, endpoint: SocketAddr, tls: Option<&CoreTls>) {
        match self {
            OpenError::Connect(error) => error.record(counters, endpoint, tls),
            OpenError::Handshake(_) => counters.upstream_error(UpstreamError::Protocol),
        }
    }
}

impl Http2Pool {
    /// A handle ready to open a stream to `endpoint`: the core's connection to it, or a new
    /// one when there is none or it has failed.
    pub async fn ready(
        &self,
        key: PoolKey,
        tls: Option<&CoreTls>,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Bytes>, OpenError> {
        let existing = self.senders.borrow().get(&key).cloned();
        if let Some(sender) = existing {
            match sender.ready().await {
                Ok(sender) => return Ok(sender),
                Err(_) => {
                    self.senders.borrow_mut().remove(&key);
                }
            }
        }
        let upstream = UpstreamConn::connect(key.addr, connect_timeout, tls)
            .await
            .map_err(OpenError::Connect)?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_reset_streams(MAX_STREAMS_PER_CONNECTION)
            .handshake::<_, Bytes>(io::stream(Vec::new(), upstream.stream))
            .await
            .map_err(OpenError::Handshake)?;
        // The connection runs until the backend closes it or every handle (pool entry and
        // streams) is gone.
        glommio::spawn_local(async move {
            let _ = connection.await;
        })
        .detach();
        self.senders.borrow_mut().insert(key, sender.clone());
        sender.ready().await.map_err(OpenError::Handshake)
    }

    /// Forgets connections to endpoints a new config no longer has; they close once their
    /// streams end.
    pub fn retain_endpoints(&self, keep: &HashSet<PoolKey>) {
        self.senders
            .borrow_mut()
            .retain(|key, _| keep.contains(key));
    }
}
