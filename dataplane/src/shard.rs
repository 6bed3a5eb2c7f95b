//! One worker core: a glommio executor pinned to one CPU that owns its listeners (one
//! SO_REUSEPORT socket per port), its connections, its upstream pool, its random numbers and
//! its counters. It shares nothing mutable with other cores; the control thread reaches it
//! only through its command channel.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncWriteExt, FutureExt, future};
use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::net::{TcpListener, TcpStream, UdpSocket};
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement, Task, spawn_local};
use portcullis_api::CompiledConfig;
use portcullis_api::config::{PortProtocol, Transport};

use crate::access_log::{self, AccessLog};
use crate::l4::open_streams::OpenStreams;
use crate::metrics::{CoreCounters, CoreStats, RouteCounters, increment};
use crate::proxy::backend_tls::CoreTls;
use crate::proxy::connection::{ConnInfo, linger, serve};
use crate::proxy::h2::{self, Http2Pool};
use crate::proxy::upstream::{Pool, PoolKey};
use crate::route::Snapshot;
use crate::route::table::BackendShare;
use crate::signal::Signal;
use crate::tls::{self, PortTlsConfigs, TicketKey, server_configs};
use crate::{IO_MEMORY, error, info, warn};

/// What the control thread asks of a core.
pub enum ShardCommand {
    /// Serve `snapshot` from now on. `sockets` are this core's sockets for the ports (by
    /// number and transport) the previous snapshot did not have; ports it no longer has are
    /// closed.
    Install {
        snapshot: Arc<Snapshot>,
        sockets: Vec<(u16, Transport, OwnedFd)>,
    },
    CollectStats,
    /// Keep accepting, but close idle connections and answer every request with
    /// `connection: close`, so clients move away while load balancers still send traffic here.
    Announce,
    /// Stop accepting, close idle connections, and report when none is left or at `deadline`.
    Drain {
        deadline: Instant,
    },
    Stop,
}

pub enum ShardReply {
    Installed { generation: u64 },
    InstallFailed { reason: String },
    Stats(CoreStats),
    Announced,
    Drained { open_connections: u64 },
}

/// The tables a core serves with, plus its own mutable companions to them.
pub struct Installed {
    pub snapshot: Arc<Snapshot>,
    pub tls: HashMap<u16, PortTlsConfigs>,
    /// Round-robin position per backend.
    cursors: Vec<Cell<u32>>,
    /// This core's TLS client state per backend of the snapshot (None: plaintext).
    pub upstream_tls: Vec<Option<Rc<CoreTls>>>,
    /// Request counters per stat slot of the snapshot.
    pub stats: Vec<Rc<RouteCounters>>,
    /// Requests that matched no port or listener, or never parsed.
    pub unmatched: Rc<RouteCounters>,
}

impl Installed {
    /// The next endpoint of a rule's backend share (None for an invalid share, or a backend
    /// without endpoints).
    pub fn next_endpoint_of(&self, share: &BackendShare) -> Option<SocketAddr> {
        let backend = *share.target.as_ref().ok()?;
        self.next_endpoint(backend as usize)
    }

    /// The next endpoint of `backend`, round robin. None when it has no endpoints.
    pub fn next_endpoint(&self, backend: usize) -> Option<SocketAddr> {
        let endpoints = &self.snapshot.backends.get(backend)?.endpoints;
        if endpoints.is_empty() {
            return None;
        }
        let cursor = &self.cursors[backend];
        let position = cursor.get() as usize % endpoints.len();
        cursor.set(cursor.get().wrapping_add(1));
        Some(endpoints[position])
    }
}

pub struct Shard {
    pub id: usize,
    pub(crate) installed: RefCell<Rc<Installed>>,
    pub pool: Pool,
    /// HTTP/2 connections to backends, one per endpoint, multiplexed.
    pub http2_pool: Http2Pool,
    rng: Cell<u64>,
    pub counters: CoreCounters,
    /// Fired when termination is announced (SIGTERM, before the drain delay): every response
    /// from then on says `connection: close`, but an idle keep-alive connection is left alone,
    /// because closing it could race a request the client is sending right now.
    pub closing: Signal,
    /// Fired when the listeners close: idle connections are closed too.
    pub drain: Signal,
    pub access_log: Option<AccessLog>,
    ticket_key: TicketKey,
    /// Over-limit connections lingering after their 503.
    refusing: Cell<u64>,
    /// Spliced TLS and TCP connections, checked against every config installed.
    pub open_streams: Rc<OpenStreams>,
}

impl Shard {
    pub(crate) fn new(id: usize, ticket_key: TicketKey, access_log: bool) -> Result<Self, String> {
        let empty = Arc::new(Snapshot::build(&CompiledConfig::empty(0))?);
        let counters = CoreCounters::default();
        let installed = Installed {
            unmatched: counters.slots(&[("".into(), "".into())]).remove(0),
            stats: Vec::new(),
            cursors: Vec::new(),
            tls: HashMap::new(),
            upstream_tls: Vec::new(),
            snapshot: empty,
        };
        Ok(Self {
            id,
            installed: RefCell::new(Rc::new(installed)),
            pool: Pool::default(),
            http2_pool: Http2Pool::default(),
            rng: Cell::new(seed(id)),
            counters,
            closing: Signal::default(),
            drain: Signal::default(),
            access_log: access_log.then(AccessLog::default),
            ticket_key,
            refusing: Cell::new(0),
            open_streams: Rc::new(OpenStreams::default()),
        })
    }

    /// The tables to serve the next request with.
    pub fn current(&self) -> Rc<Installed> {
        self.installed.borrow().clone()
    }

    /// A uniform 64-bit random number from this core's own generator (xorshift64*).
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Builds this core's companions to `snapshot` (TLS configs, cursors, counters), then
    /// swaps them in. Nothing changes when building fails.
    pub(crate) fn build(&self, snapshot: Arc<Snapshot>) -> Result<Installed, String> {
        let mut tls = HashMap::new();
        for port in &snapshot.ports {
            let passthrough = port.listeners.iter().map(|l| l.passthrough);
            if port.protocol.terminates_tls(passthrough) {
                let configs = server_configs(
                    port,
                    &snapshot,
                    &self.ticket_key,
                    &self.counters.client_certificates_unverified,
                )
                .map_err(|e| format!("port {}: {e}", port.port))?;
                tls.insert(port.port, configs);
            }
        }
        // Start each backend's rotation at a random endpoint so cores do not move in step.
        let cursors = snapshot
            .backends
            .iter()
            .map(|_| Cell::new(self.random() as u32))
            .collect();
        let upstream_tls = snapshot
            .backends
            .iter()
            .map(|b| b.tls.clone().map(|tls| Rc::new(CoreTls::new(tls))))
            .collect();
        Ok(Installed {
            upstream_tls,
            stats: self.counters.slots(&snapshot.stat_keys),
            unmatched: self.current().unmatched.clone(),
            cursors,
            tls,
            snapshot,
        })
    }
}

fn seed(id: usize) -> u64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut bytes)
        .is_ok()
    {
        let seed = u64::from_le_bytes(bytes);
        if seed != 0 {
            return seed;
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    (nanos ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

/// Starts core `id` on `cpu`.
pub fn spawn(
    id: usize,
    cpu: usize,
    commands: SharedReceiver<ShardCommand>,
    replies: SharedSender<ShardReply>,
    ticket_key: TicketKey,
    access_log: bool,
    started: std::sync::mpsc::SyncSender<()>,
) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name(&format!("portcullis-core-{id}"))
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            // glommio creates the executor (its io_uring rings, the CPU binding) inside the
            // thread: `started` tells the caller it exists. If it cannot be created, `started`
            // is dropped unsent.
            if crate::fault::core_start_fails(id) {
                return;
            }
            let _ = started.send(());
            let (commands, replies) =
                futures_lite::future::zip(commands.connect(), replies.connect()).await;
            match Shard::new(id, ticket_key, access_log) {
                Ok(shard) => run(Rc::new(shard), commands, replies).await,
                Err(e) => error!("core failed to start", "core" = id, "error" = e),
            }
        })
        .map_err(|e| std::io::Error::other(e.to_string()))
}

async fn run(
    shard: Rc<Shard>,
    commands: ConnectedReceiver<ShardCommand>,
    replies: ConnectedSender<ShardReply>,
) {
    let housekeeping = spawn_local(housekeeping(shard.clone()));
    let mut listeners: HashMap<(u16, Transport), AcceptLoop> = HashMap::new();
    while let Some(command) = commands.recv().await {
        let reply = match command {
            ShardCommand::Install { snapshot, sockets } => {
                install(&shard, snapshot, sockets, &mut listeners)
            }
            ShardCommand::CollectStats => ShardReply::Stats(shard.counters.copy(shard.id)),
            ShardCommand::Announce => {
                shard.closing.fire();
                ShardReply::Announced
            }
            ShardCommand::Drain { deadline } => {
                listeners.clear();
                shard.closing.fire();
                shard.drain.fire();
                while shard.counters.active_connections.get() > 0 && Instant::now() < deadline {
                    Timer::new(Duration::from_millis(20)).await;
                }
                ShardReply::Drained {
                    open_connections: shard.counters.active_connections.get(),
                }
            }
            ShardCommand::Stop => break,
        };
        if replies.send(reply).await.is_err() {
            break;
        }
    }
    drop(listeners);
    drop(housekeeping);
    if let Some(log) = &shard.access_log {
        log.flush();
    }
}

fn install(
    shard: &Rc<Shard>,
    snapshot: Arc<Snapshot>,
    sockets: Vec<(u16, Transport, OwnedFd)>,
    listeners: &mut HashMap<(u16, Transport), AcceptLoop>,
) -> ShardReply {
    let generation = snapshot.generation;
    let installed = match shard.build(snapshot.clone()) {
        Ok(installed) => installed,
        Err(reason) => return ShardReply::InstallFailed { reason },
    };
    let mut new_listeners = Vec::with_capacity(sockets.len());
    for (port, transport, socket) in sockets {
        let stopper = match socket.try_clone() {
            Ok(duplicate) => socket2::Socket::from(duplicate),
            Err(e) => {
                return ShardReply::InstallFailed {
                    reason: format!("duplicating the socket for port {port}: {e}"),
                };
            }
        };
        // SAFETY: `socket` is an owned, bound socket the control thread created for this core:
        // a listening TCP socket or a UDP socket, as `transport` says; ownership of the
        // descriptor moves into the glommio socket.
        #[allow(unsafe_code)]
        let socket = unsafe {
            match transport {
                Transport::Tcp => PortSocket::Tcp(TcpListener::from_raw_fd(socket.into_raw_fd())),
                Transport::Udp => PortSocket::Udp(UdpSocket::from_raw_fd(socket.into_raw_fd())),
            }
        };
        new_listeners.push(((port, transport), socket, stopper));
    }
    let wanted: HashSet<(u16, Transport)> = snapshot
        .ports
        .iter()
        .map(|p| (p.port, p.protocol.transport()))
        .collect();
    for (key, _, _) in &new_listeners {
        if !wanted.contains(key) || listeners.contains_key(key) {
            return ShardReply::InstallFailed {
                reason: format!("unexpected socket for port {}", key.0),
            };
        }
    }
    let missing: Vec<u16> = wanted
        .iter()
        .filter(|key| {
            !listeners.contains_key(key) && !new_listeners.iter().any(|(k, _, _)| k == *key)
        })
        .map(|(port, _)| *port)
        .collect();
    if !missing.is_empty() {
        return ShardReply::InstallFailed {
            reason: format!("no socket for ports {missing:?}"),
        };
    }

    // Commit: nothing below can fail.
    let poolable: HashSet<PoolKey> = snapshot
        .backends
        .iter()
        .flat_map(|b| {
            b.endpoints
                .iter()
                .map(|&addr| PoolKey::new(addr, b.tls.as_deref()))
        })
        .collect();
    shard.pool.retain_endpoints(&poolable);
    shard.http2_pool.retain_endpoints(&poolable);
    *shard.installed.borrow_mut() = Rc::new(installed);
    let revoked = shard.open_streams.revoke_disallowed(&snapshot);
    if revoked > 0 {
        info!(
            "connections closed: the new config no longer routes them",
            "core" = shard.id,
            "connections" = revoked
        );
    }
    listeners.retain(|key, _| wanted.contains(key));
    for ((port, transport), socket, stopper) in new_listeners {
        let task = match socket {
            PortSocket::Tcp(listener) => spawn_local(accept_loop(shard.clone(), listener, port)),
            PortSocket::Udp(socket) => {
                spawn_local(crate::l4::udp::serve_udp_port(shard.clone(), socket, port))
            }
        };
        listeners.insert((port, transport), AcceptLoop { stopper, task });
    }
    ShardReply::Installed { generation }
}

/// A core's socket for one port, as the control thread opened it for the port's protocol.
enum PortSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// A port's accept task (or, on a UDP port, its receive task), and a duplicate of its listening socket that stops the port
/// synchronously when the task is dropped. Dropping the task alone is not enough: the accept
/// the task has in flight in the io_uring ring holds its own reference to the socket, which
/// keeps listening (and completing handshakes nobody will accept) until the ring processes the
/// cancellation — after the ACK of a swap that removed the port, or even after the process
/// has exited, since the kernel tears rings down asynchronously. `shutdown` on a listening
/// socket closes it at once, whatever holds references to it. A UDP socket stays bound until
/// its descriptor closes: `shutdown` ends the receive in flight, and the port's sessions, the
/// other holders, are revoked by the same install (their port is gone), so it closes within
/// the core's next turns; datagrams it takes until then are dropped.
struct AcceptLoop {
    stopper: socket2::Socket,
    #[allow(dead_code)] // held so that dropping the AcceptLoop cancels the task
    task: Task<()>,
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        let _ = self.stopper.shutdown(std::net::Shutdown::Both);
    }
}

/// Decrements the open-connection gauge however the connection task ends, panics included.
struct ConnectionGuard(Rc<Shard>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let active = &self.0.counters.active_connections;
        active.set(active.get().saturating_sub(1));
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, port: u16) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                warn!("accept failed", "port" = port, "error" = e);
                Timer::new(Duration::from_millis(10)).await;
                continue;
            }
        };
        let settings_limit = shard.current().snapshot.settings.max_connections_per_core as u64;
        if shard.counters.active_connections.get() >= settings_limit {
            increment(&shard.counters.connections_rejected);
            refuse(&shard, stream, port).await;
            continue;
        }
        increment(&shard.counters.connections_accepted);
        let active = &shard.counters.active_connections;
        active.set(active.get() + 1);
        let guard = ConnectionGuard(shard.clone());
        let shard = shard.clone();
        spawn_local(async move {
            let _guard = guard;
            let connection = std::panic::AssertUnwindSafe(connection(shard.clone(), stream, port));
            if connection.catch_unwind().await.is_err() {
                increment(&shard.counters.panics);
                error!(
                    "connection handler panicked; connection closed",
                    "core" = shard.id,
                    "port" = port
                );
            }
        })
        .detach();
    }
}

/// Refused connections lingering (reading what the client still sends, so the close does not
/// reset the 503 away), at most; beyond that they are closed right after the 503.
const MAX_REFUSING: u64 = 256;
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\
    retry-after: 1\r\nconnection: close\r\n\r\n";

/// Answers a connection over the per-core limit with a 503 on plaintext ports, so a client
/// learns why instead of seeing a reset. On TLS ports a 503 would first need a handshake, the
/// very work being shed: those are closed. The 503 goes out at once with one non-blocking
/// send (a fresh socket always has room for it), so every refused client gets it however
/// many arrive together; only the lingering afterwards is capped.
async fn refuse(shard: &Rc<Shard>, mut stream: TcpStream, port: u16) {
    let plaintext = shard
        .current()
        .snapshot
        .port(port)
        .is_some_and(|table| table.protocol == PortProtocol::Http);
    if !plaintext {
        return;
    }
    let sent = future::poll_once(stream.write(REFUSAL)).await;
    if !matches!(sent, Some(Ok(n)) if n == REFUSAL.len()) {
        return;
    }
    let refusing = &shard.refusing;
    if refusing.get() >= MAX_REFUSING {
        return;
    }
    refusing.set(refusing.get() + 1);
    let shard = shard.clone();
    spawn_local(async move {
        linger(&mut stream).await;
        shard.refusing.set(shard.refusing.get().saturating_sub(1));
    })
    .detach();
}

async fn connection(shard: Rc<Shard>, stream: TcpStream, port: u16) {
    let _ = stream.set_nodelay(true);
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let installed = shard.current();
    let Some(table) = installed.snapshot.port(port) else {
        return;
    };
    // Every branch ends in one boxed future awaited below, outside the match: what a branch
    // binds (the TLS session after its handshake, hundreds of bytes) then never takes room in
    // this task's state for the connection's whole life.
    let serving: Pin<Box<dyn Future<Output = ()>>> = match table.protocol {
        PortProtocol::Http => {
            let info = ConnInfo {
                port,
                peer,
                tls: false,
            };
            drop(installed);
            Box::pin(serve(shard, stream, info))
        }
        PortProtocol::Https => {
            let Some(configs) = installed.tls.get(&port).cloned() else {
                return;
            };
            let timeout = Duration::from_millis(installed.snapshot.settings.header_read_timeout_ms);
            drop(installed);
            let handshake = Box::pin(async { tls::accept_on_port(&configs, stream).await.ok() });
            let deadline = async {
                Timer::new(timeout).await;
                None
            };
            let Some(tls) = handshake.or(deadline).await else {
                increment(&shard.counters.tls_handshake_errors);
                return;
            };
            let info = ConnInfo {
                port,
                peer,
                tls: true,
            };
            if tls.alpn_protocol() == Some(b"h2") {
                let server_name = tls.server_name().map(Box::<str>::from);
                Box::pin(h2::serve(shard, tls, Vec::new(), info, server_name))
            } else {
                Box::pin(serve(shard, tls, info))
            }
        }
        protocol @ (PortProtocol::Tls | PortProtocol::Tcp) => {
            drop(installed);
            Box::pin(crate::l4::serve_stream_port(shard, stream, port, protocol))
        }
        // A UDP port has no listening TCP socket to accept from.
        PortProtocol::Udp => return,
    };
    serving.await;
}

async fn housekeeping(shard: Rc<Shard>) {
    let mut since_prune = Duration::ZERO;
    loop {
        Timer::new(access_log::FLUSH_INTERVAL).await;
        if let Some(log) = &shard.access_log {
            log.flush();
        }
        since_prune += access_log::FLUSH_INTERVAL;
        if since_prune >= Duration::from_secs(1) {
            since_prune = Duration::ZERO;
            let idle = shard.current().snapshot.settings.upstream_idle_timeout_ms;
            shard.pool.prune(Duration::from_millis(idle));
        }
    }
}
