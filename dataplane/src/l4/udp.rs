//! UDP ports (UDPRoute): datagrams forwarded per session.
//!
//! A session is one client address and port on one UDP port. Its first datagram picks the
//! route's backend by weight and an endpoint, opens a UDP socket connected to that endpoint and
//! forwards the datagram; later datagrams of the client follow it there, and whatever the
//! endpoint sends back goes to the client from the port's own socket, so the client sees
//! answers come from the port it wrote to. Nothing in UDP says an exchange is over: a session
//! ends after `udp_session_idle_timeout_ms` without a datagram either way, when the endpoint
//! refuses a datagram (an ICMP port unreachable; the client's next datagram opens a new
//! session, maybe to another endpoint), when a new config no longer routes it or no longer
//! lists its endpoint, or when the proxy drains (answers still on their way are then lost,
//! where a spliced TCP connection gets until the drain deadline: a client resends).
//!
//! Each core has its own socket per UDP port (SO_REUSEPORT): the kernel picks it from the
//! datagram's addresses and ports, so a session's datagrams all reach the core that holds it.
//! A session is counted on its route like a connection (2xx once its first datagram is
//! forwarded; 404, 500, 502, 503 when it cannot open; a datagram that cannot open one counts
//! once); with the access log on, it gets one line when it ends.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};

use futures_lite::FutureExt;
use glommio::net::UdpSocket;
use glommio::spawn_local;
use glommio::timer::Timer;
use portcullis_api::config::Transport;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::open_streams::Registration;
use super::splice::{Ended, Spliced};
use super::{outcome, route_new_stream};
use crate::access_log::StreamEntry;
use crate::log::LogThrottle;
use crate::metrics::increment;
use crate::shard::Shard;
use crate::signal::Signal;
use crate::warn;

/// The largest UDP payload (IPv4 and IPv6 without jumbograms): a datagram is never cut.
const MAX_DATAGRAM: usize = 65_535;

thread_local! {
    /// This core's warnings about UDP ports and sessions: datagrams can trigger them at any
    /// rate, the log takes one line per interval.
    static UDP_WARNINGS: LogThrottle = LogThrottle::default();

    /// One core's buffer for the answers of all its sessions. An answer is read into it only
    /// once the session's socket is known to hold one, with a read that cannot wait, and is
    /// copied out before anything else runs; so a waiting session holds no buffer of its own
    /// (10 000 sessions would otherwise hold 640 MiB).
    static ANSWER_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into());
}

/// The open sessions of one port on one core, by client address.
type Sessions = Rc<RefCell<HashMap<SocketAddr, Rc<Session>>>>;

struct Session {
    /// Connected to the chosen endpoint; the kernel then drops datagrams from anyone else.
    upstream: UdpSocket,
    last_active: Cell<Instant>,
    to_upstream: Cell<u64>,
    /// Fired when a config no longer allows the session: from then on the client's datagrams
    /// open a new one, even before the old one's task has run and left the table.
    revoked: Rc<Signal>,
}

/// Serves a UDP port on this core until the task is dropped (the port left the config, or the
/// proxy drains).
pub async fn serve_udp_port(shard: Rc<Shard>, socket: UdpSocket, port: u16) {
    let socket = Rc::new(socket);
    let sessions: Sessions = Rc::default();
    let mut datagram = vec![0; MAX_DATAGRAM];
    loop {
        let (length, client) = match socket.recv_from(&mut datagram).await {
            Ok(received) => received,
            Err(e) => {
                // Out of memory, or the socket shut down: back off instead of spinning.
                if let Some(suppressed) = UDP_WARNINGS.with(LogThrottle::due_now) {
                    warn!(
                        "receiving on a UDP port failed",
                        "port" = port,
                        "error" = e,
                        "warnings_not_logged" = suppressed
                    );
                }
                Timer::new(Duration::from_millis(10)).await;
                continue;
            }
        };
        let existing = sessions.borrow().get(&client).cloned();
        let session = match existing {
            Some(session) if !session.revoked.is_fired() => Some(session),
            _ => open_session(&shard, &socket, &sessions, port, client),
        };
        if let Some(session) = session {
            session.last_active.set(Instant::now());
            // A send the endpoint refused shows up on the session's own reads, which end it.
            if session.upstream.send(&datagram[..length]).await.is_ok() {
                let sent = &session.to_upstream;
                sent.set(sent.get() + length as u64);
            }
        }
        // glommio's receive and send complete without waiting while datagrams are queued: a
        // flood would otherwise keep this task running and starve the core's other work
        // (connections, answers, config installs).
        glommio::yield_if_needed().await;
    }
}

/// Routes the first datagram of `client`, and opens and registers its session. None when the
/// datagram is to be dropped: over the per-core limit, or nothing to send it to. Nothing in
/// it waits, so no config can be installed between routing and registering the session.
fn open_session(
    shard: &Rc<Shard>,
    socket: &Rc<UdpSocket>,
    sessions: &Sessions,
    port: u16,
    client: SocketAddr,
) -> Option<Rc<Session>> {
    let installed = shard.current();
    let settings = installed.snapshot.settings.clone();
    if shard.counters.udp_sessions.get() >= settings.max_udp_sessions_per_core as u64 {
        increment(&shard.counters.udp_datagrams_refused);
        return None;
    }
    let started = Instant::now();
    let mut entry = StreamEntry {
        peer: Some(client),
        port,
        protocol: "udp",
        ..StreamEntry::default()
    };
    let routed = route_new_stream(shard, &installed, (port, Transport::Udp), None, &mut entry);
    drop(installed);
    let Some(routed) = routed else {
        log(shard, &entry, started);
        return None;
    };
    let upstream = match connect(routed.endpoint) {
        Ok(upstream) => upstream,
        Err(e) => {
            // Out of ephemeral ports or descriptors: every new client hits it.
            if let Some(suppressed) = UDP_WARNINGS.with(LogThrottle::due_now) {
                warn!(
                    "cannot open a UDP socket to a backend",
                    "endpoint" = routed.endpoint,
                    "error" = e,
                    "warnings_not_logged" = suppressed
                );
            }
            outcome(&routed.counters, &mut entry, 502);
            log(shard, &entry, started);
            return None;
        }
    };
    outcome(&routed.counters, &mut entry, 200);
    let registration = routed.register_session(shard);
    let session = Rc::new(Session {
        upstream,
        last_active: Cell::new(started),
        to_upstream: Cell::new(0),
        revoked: registration.revoked.clone(),
    });
    sessions.borrow_mut().insert(client, session.clone());
    let open = &shard.counters.udp_sessions;
    open.set(open.get() + 1);
    let guard = SessionGuard {
        shard: shard.clone(),
        sessions: sessions.clone(),
        session: session.clone(),
        client,
    };
    let answers = relay_answers(
        guard,
        socket.clone(),
        registration,
        entry,
        started,
        Duration::from_millis(settings.udp_session_idle_timeout_ms),
    );
    spawn_local(answers).detach();
    Some(session)
}

/// A UDP socket on an ephemeral port of the endpoint's address family, connected to it.
/// Made here rather than by glommio's `bind`, which sets SO_REUSEPORT: the kernel then hands
/// the same ephemeral port to several sessions, and the endpoint's answers to all of them
/// reach only one.
fn connect(endpoint: SocketAddr) -> std::io::Result<UdpSocket> {
    let any = match endpoint {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = Socket::new(
        Domain::for_address(endpoint),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&any.into())?;
    // A UDP connect only records the peer: it never waits.
    socket.connect(&endpoint.into())?;
    // SAFETY: `into_raw_fd` gives up an open UDP socket that nothing else owns; the glommio
    // socket takes ownership of the descriptor.
    #[allow(unsafe_code)]
    let socket = unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) };
    Ok(socket)
}

/// Removes a session from its port's table and the open-session gauge however its task ends.
struct SessionGuard {
    shard: Rc<Shard>,
    sessions: Sessions,
    session: Rc<Session>,
    client: SocketAddr,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut sessions = self.sessions.borrow_mut();
        if sessions
            .get(&self.client)
            .is_some_and(|s| Rc::ptr_eq(s, &self.session))
        {
            sessions.remove(&self.client);
        }
        let open = &self.shard.counters.udp_sessions;
        open.set(open.get().saturating_sub(1));
    }
}

enum Wakeup {
    Answer(std::io::Result<usize>),
    Deadline,
    Stop,
}

/// Sends the endpoint's answers to the client until the session ends, then logs it.
async fn relay_answers(
    guard: SessionGuard,
    socket: Rc<UdpSocket>,
    registration: Registration,
    mut entry: StreamEntry,
    started: Instant,
    idle_timeout: Duration,
) {
    let session = guard.session.clone();
    let shard = guard.shard.clone();
    let client = guard.client;
    let mut to_client = 0u64;
    let mut probe = [0u8; 1];
    let ended = loop {
        let deadline = session.last_active.get() + idle_timeout;
        // Wait until an answer is there without reading it: glommio would hold a buffer of
        // the read's size for as long as the read waits.
        let wakeup = async {
            Wakeup::Answer(
                session
                    .upstream
                    .peek(&mut probe)
                    .await
                    .map_err(std::io::Error::from),
            )
        }
        .or(async {
            Timer::new(deadline.saturating_duration_since(Instant::now())).await;
            Wakeup::Deadline
        })
        .or(async {
            registration.revoked.wait().await;
            Wakeup::Stop
        })
        .or(async {
            shard.drain.wait().await;
            Wakeup::Stop
        })
        .await;
        match wakeup {
            Wakeup::Deadline if Instant::now() >= session.last_active.get() + idle_timeout => {
                break Ended::Idle;
            }
            Wakeup::Deadline => {}
            Wakeup::Stop => break Ended::Stopped,
            // Refused (the endpoint's port is closed) or another socket error.
            Wakeup::Answer(Err(_)) => break Ended::Failed,
            Wakeup::Answer(Ok(_)) => match take_answer(&session.upstream) {
                Some(Ok(answer)) => {
                    session.last_active.set(Instant::now());
                    // A client whose socket buffer is full loses the answer, as it would
                    // without a proxy.
                    if socket.send_to(&answer, client).await.is_ok() {
                        to_client += answer.len() as u64;
                    }
                }
                Some(Err(_)) => break Ended::Failed,
                None => {}
            },
        }
    };
    entry.spliced = Some(Spliced {
        to_upstream: session.to_upstream.get(),
        to_client,
        ended,
    });
    drop(guard);
    log(&shard, &entry, started);
}

/// Reads the answer waiting on `upstream` through the core's buffer, with a read that never
/// waits (glommio's own read would fall back to a ring submission that can take the datagram
/// after its future is gone). None if there was nothing to read after all.
fn take_answer(upstream: &UdpSocket) -> Option<std::io::Result<Vec<u8>>> {
    // SAFETY: the descriptor belongs to `upstream`, which is borrowed for this whole call and
    // so stays open while `borrowed` exists.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(upstream.as_raw_fd()) };
    let socket = SockRef::from(&borrowed);
    ANSWER_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        // The socket is non-blocking: a read finds the datagram the peek saw, or WouldBlock.
        match (&*socket).read(&mut buffer) {
            Ok(length) => Some(Ok(buffer[..length].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(e)),
        }
    })
}

fn log(shard: &Shard, entry: &StreamEntry, started: Instant) {
    if let Some(log) = &shard.access_log {
        log.stream(entry, started.elapsed());
    }
}
