//! Upstream connections and the per-core keep-alive pool.
//!
//! Each core owns its pool; connections never move between cores. An idle connection is
//! checked before reuse (a peer that closed it, or sent bytes nobody asked for, is dropped),
//! which avoids most keep-alive races with upstreams that close idle connections.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

use crate::io::RecvBuf;
use crate::sys::{IdleSocket, idle_socket_state};

#[derive(Debug)]
pub struct UpstreamConn {
    pub stream: TcpStream,
    pub rx: RecvBuf,
    pub addr: SocketAddr,
}

impl UpstreamConn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<UpstreamConn> {
        let stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(std::io::Error::from)?;
        let _ = stream.set_nodelay(true);
        Ok(UpstreamConn {
            stream,
            rx: RecvBuf::new(),
            addr,
        })
    }
}

#[derive(Debug, Default)]
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<(UpstreamConn, Instant)>>>,
}

impl Pool {
    /// The most recently used healthy idle connection to `addr`, if any.
    pub fn checkout(&self, addr: SocketAddr, idle_timeout: Duration) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let stack = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((conn, since)) = stack.pop() {
            if now.duration_since(since) < idle_timeout
                && idle_socket_state(conn.stream.as_raw_fd()) == IdleSocket::Open
            {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for reuse unless the endpoint already has `max_idle` idle connections.
    pub fn checkin(&self, mut conn: UpstreamConn, max_idle: usize) {
        if !conn.rx.is_empty() {
            return; // bytes after the response: the framing is off, never reuse
        }
        conn.rx.release_if_empty();
        let mut idle = self.idle.borrow_mut();
        let stack = idle.entry(conn.addr).or_default();
        if stack.len() < max_idle {
            stack.push((conn, Instant::now()));
        }
    }

    /// Closes connections idle longer than `idle_timeout`.
    pub fn prune(&self, idle_timeout: Duration) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|_, stack| {
            stack.retain(|(_, since)| now.duration_since(*since) < idle_timeout);
            !stack.is_empty()
        });
    }

    /// Closes connections to endpoints no longer in the config.
    pub fn retain_endpoints(&self, endpoints: &HashSet<SocketAddr>) {
        self.idle
            .borrow_mut()
            .retain(|addr, _| endpoints.contains(addr));
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}
