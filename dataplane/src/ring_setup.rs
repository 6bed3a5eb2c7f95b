//! Cooperative task running for glommio's io_uring rings.
//!
//! glommio 0.9 creates its rings with no setup flags. The kernel then delivers every socket
//! readiness event to the proxy thread as task work with an inter-processor interrupt: on the
//! benchmark about 1.5 reschedule IPIs per proxied request, each one interrupting a busy core
//! (bench/README.md, "Findings"). `IORING_SETUP_COOP_TASKRUN` (Linux 5.19) lets that work wait
//! for the thread's next transition into the kernel, which a glommio executor makes on every
//! loop iteration (it submits or sleeps through `io_uring_enter`), so nothing waits longer.
//!
//! glommio exposes no way to pass setup flags, so the linker routes its call to liburing's
//! `io_uring_queue_init_params` through the wrapper below (`-Wl,--wrap`, set in build.rs). The
//! wrapper adds the flag to interrupt-driven rings (never to glommio's IOPOLL ring, whose
//! completions are polled anyway) and retries without it where the kernel refuses the flag.
//! `PORTCULLIS_IO_URING_COOP_TASKRUN=0` turns it off (for comparison, or should a kernel
//! misbehave with it).

#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

const IORING_SETUP_IOPOLL: u32 = 1 << 0;
const IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;
/// `struct io_uring_params` is 120 bytes; `flags` is its third `u32`.
const PARAMS_LEN: usize = 120;
const FLAGS_INDEX: usize = 2;

/// Rings created with cooperative task running, process-wide (startup only, never on the
/// request path).
static COOPERATIVE_RINGS: AtomicUsize = AtomicUsize::new(0);
/// Rings whose kernel refused the flag and that were created without it.
static REFUSED: AtomicUsize = AtomicUsize::new(0);

/// How many io_uring rings this process created with cooperative task running, and how many
/// fell back to plain rings because the kernel refused the flag.
pub fn cooperative_rings() -> (usize, usize) {
    (
        COOPERATIVE_RINGS.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
    )
}

unsafe extern "C" {
    /// liburing's own `io_uring_queue_init_params` (the linker's name for it under `--wrap`).
    fn __real_io_uring_queue_init_params(
        entries: c_uint,
        ring: *mut c_void,
        params: *mut u32,
    ) -> c_int;
}

/// Whether `PORTCULLIS_IO_URING_COOP_TASKRUN` leaves the flag on (it does unless set to `0`).
fn enabled() -> bool {
    std::env::var_os("PORTCULLIS_IO_URING_COOP_TASKRUN").is_none_or(|v| v != "0")
}

/// The linker sends glommio's calls to `io_uring_queue_init_params` here.
///
/// # Safety
/// Same contract as liburing's function: `ring` points to writable storage for a
/// `struct io_uring` and `params` to a valid, writable `struct io_uring_params`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_io_uring_queue_init_params(
    entries: c_uint,
    ring: *mut c_void,
    params: *mut u32,
) -> c_int {
    // SAFETY: the caller passes a valid, writable io_uring_params (PARAMS_LEN bytes, u32
    // aligned); we read and write only within it.
    unsafe {
        let flags = params.add(FLAGS_INDEX);
        if *flags & (IORING_SETUP_IOPOLL | IORING_SETUP_COOP_TASKRUN) != 0 || !enabled() {
            return __real_io_uring_queue_init_params(entries, ring, params);
        }
        // The kernel may write to the params even when it refuses them; keep the caller's.
        let original = std::ptr::read(params.cast::<[u8; PARAMS_LEN]>());
        *flags |= IORING_SETUP_COOP_TASKRUN;
        let rc = __real_io_uring_queue_init_params(entries, ring, params);
        if rc == -libc::EINVAL {
            std::ptr::write(params.cast::<[u8; PARAMS_LEN]>(), original);
            REFUSED.fetch_add(1, Ordering::Relaxed);
            return __real_io_uring_queue_init_params(entries, ring, params);
        }
        if rc == 0 {
            COOPERATIVE_RINGS.fetch_add(1, Ordering::Relaxed);
        }
        rc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    #[test]
    fn a_glommio_executor_gets_cooperative_rings_through_the_linker_wrap() {
        let (before, refused_before) = cooperative_rings();
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(crate::IO_MEMORY)
            .spawn(|| async { 1 + 1 });
        let answer = handle.map(|h| h.join());
        assert!(matches!(answer, Ok(Ok(2))), "executor failed: {answer:?}");
        let (after, refused_after) = cooperative_rings();
        // The main and latency rings are interrupt-driven; the IOPOLL ring is left alone.
        // Kernels before 5.19 refuse the flag and the rings are created without it.
        assert!(
            after - before + (refused_after - refused_before) >= 2,
            "the wrapper saw no ring: {before}->{after} cooperative, \
             {refused_before}->{refused_after} refused"
        );
    }
}
