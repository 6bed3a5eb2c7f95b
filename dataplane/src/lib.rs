//! `portcullis-dataplane`: the Portcullis proxy.
//!
//! - [`shard`]: one glommio executor per worker core; owns listeners, connections, pools.
//! - [`proxy`]: the HTTP/1.1 and HTTP/2 engine a connection runs (routing, forwarding, filters).
//! - [`http`]: message syntax (parsing, framing, chunked coding).
//! - [`route`]: the immutable routing snapshot of one config generation.
//! - [`l4`]: TLS and TCP ports: whole connections routed (by SNI on TLS), passed through or
//!   terminated, spliced.
//! - [`tls`]: rustls termination, per-core configs, shared-key session tickets.
//! - [`control`]: the control thread (config socket, swaps, admin endpoint, drain).

pub mod access_log;
pub mod cli;
pub mod control;
pub mod fault;
// Fuzz entry points and their harness: built for the fuzz crate and the unit tests only.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod io;
pub mod l4;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod ring_setup;
pub mod route;
pub mod shard;
pub mod signal;
pub mod sys;
pub mod tls;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement, spawn_local};
use portcullis_api::frame::{Reply, decode_json};

use cli::Options;
use control::{Control, CoreLink};

/// Memory glommio registers with each ring for file I/O. The proxy does no file I/O, and
/// glommio's 10 MiB default exceeds common locked-memory limits.
pub const IO_MEMORY: usize = 64 << 10;

/// Runs the proxy until SIGTERM/SIGINT has drained it. Errors are one line, fit for stderr.
pub fn run(options: Options) -> Result<(), String> {
    log::set_level(options.log_level);
    // Before any executor or thread starts, so every arena is created with these thresholds.
    sys::keep_freed_heap();
    let allowed = sys::allowed_cpus().map_err(|e| format!("reading the CPU affinity mask: {e}"))?;
    let cpus = cli::select_cpus(&options, &allowed)?;
    preflight(cpus.len() + 1)?;
    if options.config.is_none() && options.control_socket.is_none() {
        return Err("nothing to serve: give --config FILE and/or --control-socket PATH".into());
    }
    for (flag, value) in [
        ("--drain-timeout", options.drain_timeout),
        ("--drain-delay", options.drain_delay),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(format!("{flag} must be a non-negative number of seconds"));
        }
    }
    let initial = match &options.config {
        Some(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            Some(decode_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let admin_socket = control::admin::bind(options.admin_address).map_err(|e| {
        format!(
            "cannot listen on admin address {}: {e}",
            options.admin_address
        )
    })?;
    let ticket_key = tls::TicketKey::generate()?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone())
            .map_err(|e| format!("installing the signal handler: {e}"))?;
    }

    let mut core_handles = Vec::with_capacity(cpus.len());
    let mut links = Vec::with_capacity(cpus.len());
    let mut starting = Vec::with_capacity(cpus.len());
    for (id, cpu) in cpus.iter().copied().enumerate() {
        let (command_tx, command_rx) = shared_channel::new_bounded(4);
        let (reply_tx, reply_rx) = shared_channel::new_bounded(4);
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let handle = shard::spawn(
            id,
            cpu,
            command_rx,
            reply_tx,
            ticket_key.clone(),
            options.access_log,
            started_tx,
        )
        .map_err(|e| format!("starting worker core {id} on CPU {cpu}: {e}"))?;
        core_handles.push(handle);
        links.push((command_tx, reply_rx));
        starting.push(started_rx);
    }
    // A core whose executor could not be created would leave the control thread waiting for
    // it forever (and the admin endpoint unserved, SIGTERM unheeded): fail with its error.
    for (id, started) in starting.into_iter().enumerate() {
        if started.recv().is_err() {
            let what = format!("starting worker core {id} on CPU {}", cpus[id]);
            let handle = core_handles.swap_remove(id);
            return Err(match handle.join() {
                Err(error) => executor_failure(&what, &error),
                Ok(()) => format!("{what}: it stopped before it started"),
            });
        }
    }
    info!(
        "starting",
        "cores" = format!("{cpus:?}"),
        "admin" = options.admin_address
    );

    let bind_address = options.bind_address;
    let control_socket = options.control_socket.clone();
    let drain_timeout = Duration::from_secs_f64(options.drain_timeout);
    let drain_delay = Duration::from_secs_f64(options.drain_delay);
    let control = LocalExecutorBuilder::new(Placement::Unbound)
        .name("portcullis-control")
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let mut cores = Vec::with_capacity(links.len());
            for (commands, replies) in links {
                cores.push(CoreLink {
                    commands: commands.connect().await,
                    replies: replies.connect().await,
                });
            }
            // Every core has answered, so every ring exists.
            let (cooperative, refused) = ring_setup::cooperative_rings();
            info!(
                "io_uring rings created",
                "cooperative_task_run" = cooperative.to_string(),
                "kernel_refused_cooperative" = refused.to_string()
            );
            let control = Rc::new(Control::new(cores, bind_address));
            let result = start(&control, initial, control_socket, admin_socket).await;
            if result.is_ok() {
                control::shutdown_requested(shutdown).await;
            }
            match result {
                Ok(()) => control.drain(drain_delay, drain_timeout).await,
                Err(_) => control.drain(Duration::ZERO, Duration::ZERO).await,
            }
            result
        })
        .map_err(|e| format!("starting the control thread: {e}"))?;
    let result = match control.join() {
        Ok(result) => result,
        // Its executor never ran (or it panicked): the cores may still be waiting to connect
        // to it, so they are not joined.
        Err(e) => return Err(executor_failure("control thread failed", &e)),
    };
    for handle in core_handles {
        let _ = handle.join();
    }
    if result.is_ok() {
        info!("stopped");
    }
    result
}

async fn start(
    control: &Rc<Control>,
    initial: Option<portcullis_api::CompiledConfig>,
    control_socket: Option<std::path::PathBuf>,
    admin_socket: std::os::fd::OwnedFd,
) -> Result<(), String> {
    if let Some(config) = initial
        && let Reply::Nack { reason } = control.apply(Ok(config)).await
    {
        return Err(format!("the --config file was rejected: {reason}"));
    }
    if let Some(path) = control_socket {
        let listener = control::bind_control_socket(&path)
            .map_err(|e| format!("cannot listen on control socket {}: {e}", path.display()))?;
        spawn_local(control::serve_control_socket(control.clone(), listener)).detach();
    }
    spawn_local(control::admin::serve(control.clone(), admin_socket)).detach();
    Ok(())
}

/// An executor's error, with the likely cause when its io_uring rings could not be created.
fn executor_failure(what: &str, error: &glommio::GlommioError<()>) -> String {
    let out_of_locked_memory = matches!(error,
        glommio::GlommioError::IoError(e) if e.raw_os_error() == Some(libc::ENOMEM));
    if out_of_locked_memory {
        format!(
            "{what}: {error}. The kernel charges io_uring memory to the user's locked-memory \
             limit (RLIMIT_MEMLOCK), summed over every process of this UID on the machine, and \
             about 240 KiB per executor is needed: run fewer proxies under this UID (the \
             operator gives each Gateway's proxies a UID of their own), fewer --cores, or raise \
             the memlock limit"
        )
    } else {
        format!("{what}: {error}")
    }
}

/// Fails early, with the fix, when the machine cannot run the proxy.
fn preflight(executors: usize) -> Result<(), String> {
    if let Err(e) = sys::probe_io_uring() {
        return Err(format!(
            "io_uring is unavailable ({e}). The proxy is built on io_uring: in a container, \
             run it with the Portcullis seccomp profile (see docs/seccomp.md) instead of the \
             runtime's default profile; on a host, check that `sysctl kernel.io_uring_disabled` \
             is 0 and the kernel is 5.8 or newer"
        ));
    }
    if !sys::is_root() {
        let needed = (executors * IO_MEMORY * 2) as u64;
        if let Ok(Some(limit)) = sys::memlock_limit()
            && limit < needed
        {
            return Err(format!(
                "the locked-memory limit is {} KiB but {executors} executors need {} KiB: \
                     raise it (`ulimit -l {}`, or the container runtime's memlock ulimit)",
                limit / 1024,
                needed / 1024,
                needed / 1024
            ));
        }
    }
    Ok(())
}
