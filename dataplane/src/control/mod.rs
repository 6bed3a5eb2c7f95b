//! The control thread: the proxy's only way in for configuration.
//!
//! It runs on its own glommio executor, off the worker cores. For each config it receives it
//! decodes and validates everything, builds the routing snapshot once, opens listening
//! sockets for new ports (one per core, SO_REUSEPORT), hands every core an `Arc` of the
//! snapshot over that core's channel, and answers ACK only when all cores serve it. Anything
//! that fails before the hand-over leaves the running config untouched; a core that cannot
//! install (which validation makes very unlikely) makes every core go back to the previous
//! snapshot before the NACK.

pub mod admin;
pub mod listen;

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use glommio::net::{UnixListener, UnixStream};
use glommio::spawn_local;
use glommio::sync::Semaphore;
use glommio::timer::Timer;
use portcullis_api::CompiledConfig;
use portcullis_api::frame::{FrameError, FrameHeader, PREFIX_BYTES, Reply};

use crate::metrics::{ControlStats, CoreStats};
use crate::route::Snapshot;
use crate::shard::{ShardCommand, ShardReply};
use crate::{debug, error, info, warn};
use portcullis_api::config::Transport;

/// A worker core as the control thread sees it.
pub struct CoreLink {
    pub commands: ConnectedSender<ShardCommand>,
    pub replies: ConnectedReceiver<ShardReply>,
}

/// The config being served.
pub struct Active {
    pub config: Rc<CompiledConfig>,
    pub snapshot: Arc<Snapshot>,
}

#[derive(Default)]
struct State {
    active: Option<Active>,
    /// The config the active one replaced, freed once the sender has its ACK
    /// (`release_retired`): freeing a large config's tables takes as long as a good part of
    /// building them, and neither this push nor the next should wait for it.
    retired: Option<Active>,
    /// Ports each core has a socket for.
    core_ports: Vec<HashSet<(u16, Transport)>>,
    stats: ControlStats,
    draining: bool,
}

pub struct Control {
    cores: Vec<CoreLink>,
    /// One exchange with the cores at a time (swaps, stats, drain).
    exchange: Semaphore,
    state: RefCell<State>,
    bind_address: IpAddr,
}

impl Control {
    pub fn new(cores: Vec<CoreLink>, bind_address: IpAddr) -> Self {
        let state = State {
            core_ports: vec![HashSet::new(); cores.len()],
            ..State::default()
        };
        Self {
            cores,
            exchange: Semaphore::new(1),
            state: RefCell::new(state),
            bind_address,
        }
    }

    pub fn is_ready(&self) -> bool {
        let state = self.state.borrow();
        state.stats.ready && !state.draining
    }

    pub fn active_config(&self) -> Option<Rc<CompiledConfig>> {
        self.state
            .borrow()
            .active
            .as_ref()
            .map(|a| a.config.clone())
    }

    pub fn control_stats(&self) -> ControlStats {
        self.state.borrow().stats.clone()
    }

    /// Sends one command to every core and collects one reply from each, in core order.
    async fn exchange(
        &self,
        mut command: impl FnMut(usize) -> ShardCommand,
    ) -> Vec<Option<ShardReply>> {
        for (i, core) in self.cores.iter().enumerate() {
            if core.commands.send(command(i)).await.is_err() {
                error!("core stopped taking commands", "core" = i);
            }
        }
        let mut replies = Vec::with_capacity(self.cores.len());
        for core in &self.cores {
            replies.push(core.replies.recv().await);
        }
        replies
    }

    pub async fn collect_stats(&self) -> Vec<CoreStats> {
        let Ok(_permit) = self.exchange.acquire_permit(1).await else {
            return Vec::new();
        };
        self.exchange(|_| ShardCommand::CollectStats)
            .await
            .into_iter()
            .filter_map(|reply| match reply {
                Some(ShardReply::Stats(stats)) => Some(stats),
                _ => None,
            })
            .collect()
    }

    /// Applies a decoded (or undecodable) config and returns the reply for its sender.
    pub async fn apply(&self, decoded: Result<CompiledConfig, FrameError>) -> Reply {
        let Ok(_permit) = self.exchange.acquire_permit(1).await else {
            return Reply::Nack {
                reason: "the proxy is shutting down".into(),
            };
        };
        let started = Instant::now();
        let reply = match decoded {
            Ok(config) => self.apply_config(config).await,
            Err(e) => Err(e.to_string()),
        };
        let mut state = self.state.borrow_mut();
        match reply {
            Ok(Some(generation)) => {
                let seconds = started.elapsed().as_secs_f64();
                state.stats.swaps += 1;
                state.stats.swap_seconds.observe(seconds);
                state.stats.last_swap_seconds = seconds;
                state.stats.generation = Some(generation);
                state.stats.ready = true;
                info!(
                    "config applied",
                    "generation" = generation,
                    "seconds" = seconds
                );
                Reply::Ack { generation }
            }
            Ok(None) => {
                let generation = state.stats.generation.unwrap_or_default();
                Reply::Ack { generation }
            }
            Err(reason) => {
                state.stats.rejections += 1;
                warn!("config rejected", "reason" = reason);
                Reply::Nack { reason }
            }
        }
    }

    /// Ok(Some(generation)) when applied, Ok(None) when identical to the active config.
    async fn apply_config(&self, config: CompiledConfig) -> Result<Option<u64>, String> {
        let previous = {
            let state = self.state.borrow();
            if state.draining {
                return Err("the proxy is draining".into());
            }
            if let Some(active) = &state.active {
                let current = active.config.generation;
                if config.generation < current {
                    return Err(format!(
                        "stale generation {} (serving {current})",
                        config.generation
                    ));
                }
                if config.generation == current {
                    // Hashed only here: a re-sent generation is rare, and hashing every
                    // config would add a full serialization to each swap.
                    return if config.content_hash() == active.config.content_hash() {
                        Ok(None)
                    } else {
                        Err(format!(
                            "generation {current} is already served with different content"
                        ))
                    };
                }
            }
            state.active.as_ref().map(|a| a.snapshot.clone())
        };
        let started = Instant::now();
        let snapshot = Arc::new(Snapshot::build(&config)?);
        let built = Instant::now();
        if let Err(reason) = self.install_everywhere(&snapshot).await {
            let rollback = self.roll_back(previous.as_ref()).await;
            return Err(reason + &rollback);
        }
        debug!(
            "config installed",
            "generation" = config.generation,
            "build_ms" = ms(built - started),
            "install_ms" = ms(built.elapsed())
        );
        let generation = config.generation;
        let mut state = self.state.borrow_mut();
        let replaced = state.active.replace(Active {
            config: Rc::new(config),
            snapshot,
        });
        // One retired by a swap whose sender has not had its ACK yet (pushes from two
        // connections in a row) is freed here, so no more than two configs are ever held.
        let unreleased = std::mem::replace(&mut state.retired, replaced);
        drop(state);
        drop(unreleased);
        Ok(Some(generation))
    }

    /// Frees the config the last swap replaced. Called once its sender has the ACK; until
    /// then the old tables stay allocated (two configs at most).
    pub fn release_retired(&self) {
        let retired = self.state.borrow_mut().retired.take();
        drop(retired);
    }

    /// Opens the sockets each core lacks for `snapshot`, then installs it on every core.
    async fn install_everywhere(&self, snapshot: &Arc<Snapshot>) -> Result<(), String> {
        let wanted: Vec<(u16, Transport)> = snapshot
            .ports
            .iter()
            .map(|p| (p.port, p.protocol.transport()))
            .collect();
        let mut sockets = Vec::with_capacity(self.cores.len());
        {
            let state = self.state.borrow();
            for ports in &state.core_ports {
                let mut core_sockets = Vec::new();
                for &(port, transport) in wanted.iter().filter(|p| !ports.contains(p)) {
                    let socket = listen::reuse_port_socket(transport, self.bind_address, port)
                        .map_err(|e| {
                            format!(
                                "cannot listen on {}:{port} ({transport:?}): {e}",
                                self.bind_address
                            )
                        })?;
                    core_sockets.push((port, transport, socket));
                }
                sockets.push(core_sockets);
            }
        }
        let mut sockets = sockets.into_iter();
        let replies = self
            .exchange(|_| ShardCommand::Install {
                snapshot: snapshot.clone(),
                sockets: sockets.next().unwrap_or_default(),
            })
            .await;
        let mut failures = Vec::new();
        let mut state = self.state.borrow_mut();
        for (core, reply) in replies.into_iter().enumerate() {
            match reply {
                Some(ShardReply::Installed { .. }) => {
                    state.core_ports[core] = wanted.iter().copied().collect();
                }
                Some(ShardReply::InstallFailed { reason }) => {
                    failures.push(format!("core {core}: {reason}"))
                }
                _ => failures.push(format!("core {core}: no reply")),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    async fn roll_back(&self, previous: Option<&Arc<Snapshot>>) -> String {
        let previous = match previous {
            Some(p) => p.clone(),
            None => match Snapshot::build(&CompiledConfig::empty(0)) {
                Ok(empty) => Arc::new(empty),
                Err(e) => return format!("; rollback impossible: {e}"),
            },
        };
        match self.install_everywhere(&previous).await {
            Ok(()) => "; previous config restored".into(),
            Err(e) => format!("; rollback failed: {e}"),
        }
    }

    /// Stops accepting everywhere, lets open requests finish until `timeout`, stops the cores.
    /// First, for `delay`, the proxy reports not ready and keeps accepting while every
    /// response says `connection: close`: load balancers and Service endpoints have time to
    /// stop sending new connections here before the listeners close.
    pub async fn drain(&self, delay: Duration, timeout: Duration) {
        self.state.borrow_mut().draining = true;
        let Ok(_permit) = self.exchange.acquire_permit(1).await else {
            return;
        };
        if !delay.is_zero() {
            info!(
                "not ready; closing connections while still accepting",
                "delay_seconds" = delay.as_secs_f64()
            );
            self.exchange(|_| ShardCommand::Announce).await;
            Timer::new(delay).await;
        }
        let deadline = Instant::now() + timeout;
        info!("draining", "timeout_seconds" = timeout.as_secs_f64());
        let replies = self.exchange(|_| ShardCommand::Drain { deadline }).await;
        let open: u64 = replies
            .iter()
            .map(|r| match r {
                Some(ShardReply::Drained { open_connections }) => *open_connections,
                _ => 0,
            })
            .sum();
        if open > 0 {
            warn!(
                "drain timeout reached; closing remaining connections",
                "open" = open
            );
        }
        for core in &self.cores {
            let _ = core.commands.send(ShardCommand::Stop).await;
        }
    }
}

/// Binds the control socket, replacing a socket file a previous run left behind.
pub fn bind_control_socket(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if metadata.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(std::io::Error::from)?;
    restrict_permissions(path);
    Ok(listener)
}

/// Serves the control socket: frames in, one reply line out per frame.
pub async fn serve_control_socket(control: Rc<Control>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                spawn_local(control_connection(control.clone(), stream)).detach();
            }
            Err(e) => {
                warn!("control socket accept failed", "error" = e);
                Timer::new(Duration::from_millis(50)).await;
            }
        }
    }
}

fn restrict_permissions(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    // Only the proxy's own user (the agent shares it) may push configs.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

async fn control_connection(control: Rc<Control>, mut stream: UnixStream) {
    loop {
        let mut header = [0u8; PREFIX_BYTES];
        if stream.read_exact(&mut header).await.is_err() {
            return; // the client closed between frames
        }
        let header = match FrameHeader::parse(&header) {
            Ok(header) => header,
            Err(e) => {
                // The stream position is unknown after a bad header: answer and hang up.
                let reply = control.apply(Err(e)).await;
                let _ = stream.write_all(reply.to_line().as_bytes()).await;
                return;
            }
        };
        let started = Instant::now();
        let mut body = vec![0u8; header.body_len()];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let received = Instant::now();
        let decoded = header.decode_body(&body);
        drop(body);
        debug!(
            "config frame received",
            "bytes" = header.payload_len,
            "receive_ms" = ms(received - started),
            "decode_ms" = ms(received.elapsed())
        );
        let reply = control.apply(decoded).await;
        let sent = stream.write_all(reply.to_line().as_bytes()).await;
        control.release_retired();
        if sent.is_err() {
            return;
        }
    }
}

/// Milliseconds to two decimals, for logs.
fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_requested(flag: Arc<AtomicBool>) {
    while !flag.load(Ordering::Relaxed) {
        Timer::new(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Weak;

    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    fn served_snapshot(control: &Control) -> Weak<Snapshot> {
        let state = control.state.borrow();
        let active = state.active.as_ref().expect("a config is active");
        Arc::downgrade(&active.snapshot)
    }

    #[test]
    fn a_replaced_config_is_freed_once_released_and_never_before_its_replacement_serves() {
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(crate::IO_MEMORY)
            .spawn(|| async {
                // No worker cores: the swap is only the control thread's bookkeeping.
                let control = Control::new(Vec::new(), Ipv4Addr::LOCALHOST.into());
                let ack = control.apply(Ok(CompiledConfig::empty(1))).await;
                assert_eq!(ack, Reply::Ack { generation: 1 });
                let first = served_snapshot(&control);

                let ack = control.apply(Ok(CompiledConfig::empty(2))).await;
                assert_eq!(ack, Reply::Ack { generation: 2 });
                let second = served_snapshot(&control);
                assert!(
                    first.upgrade().is_some(),
                    "the replaced tables live until the sender has its ACK"
                );
                control.release_retired();
                assert!(first.upgrade().is_none(), "released after the ACK");
                assert!(second.upgrade().is_some(), "the active config stays");

                // A swap whose predecessor was never released frees it then: at most two
                // configs are ever held.
                control.apply(Ok(CompiledConfig::empty(3))).await;
                control.apply(Ok(CompiledConfig::empty(4))).await;
                assert!(second.upgrade().is_none());
                // A refused config retires nothing.
                let fourth = served_snapshot(&control);
                let nack = control.apply(Ok(CompiledConfig::empty(1))).await;
                assert!(matches!(nack, Reply::Nack { .. }), "{nack:?}");
                control.release_retired();
                assert!(fourth.upgrade().is_some());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
