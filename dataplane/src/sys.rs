//! The few system calls the proxy makes itself. Each `unsafe` block is a plain libc call on
//! memory this module owns; every function here has a test.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

/// CPUs this process may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size we pass; pid 0 is this thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET only reads the set; `cpu` is below the set's capacity.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Whether io_uring can be used: creates and closes a one-entry ring. Container runtimes'
/// default seccomp profiles answer EPERM; old kernels ENOSYS.
pub fn probe_io_uring() -> io::Result<()> {
    // Layout of struct io_uring_params (120 bytes); only the size matters for the probe.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) reads and writes `params`, a 120-byte buffer we own, which is
    // the kernel's struct io_uring_params size.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the ring descriptor the kernel just returned to us and nothing else owns.
    unsafe { libc::close(fd as RawFd) };
    Ok(())
}

/// The soft RLIMIT_MEMLOCK in bytes (None = unlimited).
pub fn memlock_limit() -> io::Result<Option<u64>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur))
}

/// Whether the process may lock memory without limit (root or CAP_IPC_LOCK).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// State of an idle upstream connection, checked before reusing it.
#[derive(Debug, PartialEq, Eq)]
pub enum IdleSocket {
    /// Nothing to read and still open: safe to send a request.
    Open,
    /// The peer closed it, reset it, or sent bytes nobody asked for.
    Unusable,
}

/// Peeks without blocking: an idle keep-alive connection must have nothing to read.
pub fn idle_socket_state(fd: RawFd) -> IdleSocket {
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`, which we own; MSG_PEEK leaves the data in
    // the socket and MSG_DONTWAIT keeps the call from blocking.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
        IdleSocket::Open
    } else {
        IdleSocket::Unusable
    }
}

/// Bytes written to a TCP socket that its peer has not acknowledged yet (SIOCOUTQ): what a
/// slow reader has not taken, however much the kernel accepted.
pub fn unacknowledged_bytes(fd: RawFd) -> u64 {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one c_int into `queued`, which we own; on a descriptor
    // that is not a TCP socket the call fails and nothing is written.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int) };
    if rc < 0 {
        0
    } else {
        u64::try_from(queued).unwrap_or(0)
    }
}

/// Makes closing `fd` reset the connection (SO_LINGER 0) instead of leaving unsent data queued
/// in the kernel for a peer that is not reading it.
pub fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from `linger`, which lives for the
    // call; a failure leaves the socket as it was, which is harmless here.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Free memory each malloc arena keeps at the top of its heap instead of handing it back to
/// the kernel.
///
/// With glibc's defaults (128 KiB, raised only after a large mapped block is freed), every
/// core's arena under TLS load shrank its heap with `madvise` about once per 50 requests and
/// faulted the pages back in right after: 3 page faults per request, about a fifth of the
/// proxy's kernel time per TLS request on the benchmark VM (bench/README.md). At 1 MiB the
/// faults are gone; each arena (one per core, plus the control thread's) keeps at most this
/// much free at the top of its heap.
pub const HEAP_KEEP_BYTES: i32 = 1 << 20;

/// The size from which an allocation gets its own mapping: glibc's largest (32 MiB on
/// 64-bit), so large blocks come from the heap and reuse what the last one freed.
///
/// A config swap allocates a few blocks over 1 MiB (the received frame, the decoded route
/// list, the routing tables' arrays). Each mapped block arrives as fresh pages the kernel
/// zeroes on first touch and leaves with `munmap` when freed: at a 1 MiB threshold a swap of
/// 10 000 routes faulted about 950 more pages (bench/README.md has the push -> ACK times).
/// The cost: a freed block below live data stays with the process until the blocks around
/// it are freed too (a 10 000-route config replaced by a small one can leave its blocks in
/// the control thread's heap until the next large swap reuses them), where a mapping went
/// back to the kernel at once; only the heap top is trimmed past [`HEAP_KEEP_BYTES`].
pub const OWN_MAPPING_FROM_BYTES: i32 = 32 << 20;

/// Sets the trim threshold to [`HEAP_KEEP_BYTES`] and the mapping threshold to
/// [`OWN_MAPPING_FROM_BYTES`] unless `GLIBC_TUNABLES` tunes malloc already (an operator's
/// choice wins). Call before any thread starts. Returns whether it changed them.
pub fn keep_freed_heap() -> bool {
    if malloc_tuned_by(std::env::var("GLIBC_TUNABLES").ok().as_deref()) {
        return false;
    }
    // SAFETY: mallopt only sets allocator parameters; both values are in their valid ranges
    // (the mapping threshold's maximum is 32 MiB on 64-bit).
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_KEEP_BYTES) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM_BYTES) == 1
    }
}

/// Whether a `GLIBC_TUNABLES` value sets any malloc parameter.
fn malloc_tuned_by(tunables: Option<&str>) -> bool {
    tunables.is_some_and(|t| t.contains("glibc.malloc."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn the_heap_thresholds_are_set_unless_the_environment_tunes_malloc() {
        assert!(!malloc_tuned_by(None));
        assert!(!malloc_tuned_by(Some("glibc.pthread.rseq=0")));
        assert!(malloc_tuned_by(Some(
            "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=0"
        )));
        // glibc accepts both values (mallopt answers 0 for one it refuses).
        assert_eq!(
            keep_freed_heap(),
            !malloc_tuned_by(std::env::var("GLIBC_TUNABLES").ok().as_deref())
        );
    }

    #[test]
    fn affinity_lists_at_least_one_cpu() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn io_uring_probe_answers() {
        // Either outcome is legitimate on some machine; the call itself must not crash, and on
        // failure it must carry an OS error code the start-up message can explain.
        if let Err(e) = probe_io_uring() {
            assert!(e.raw_os_error().is_some());
        }
    }

    #[test]
    fn memlock_limit_reads() {
        let _ = memlock_limit().unwrap();
    }

    #[test]
    fn unacknowledged_bytes_count_what_the_peer_has_not_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        // A receiver that never reads: its buffers fill, and the rest stays queued here.
        client
            .set_nonblocking(true)
            .and_then(|_| server.set_nonblocking(true))
            .unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        while let Ok(n) = server.write(&chunk) {
            written += n;
        }
        let queued = unacknowledged_bytes(server.as_raw_fd());
        assert!(
            queued > 0 && queued as usize <= written,
            "{queued} of {written}"
        );
        assert_eq!(unacknowledged_bytes(client.as_raw_fd()), 0);
        assert_eq!(unacknowledged_bytes(-1), 0);
    }

    #[test]
    fn reset_on_close_resets_instead_of_finishing() {
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        reset_on_close(server.as_raw_fd());
        drop(server);
        let mut buf = [0u8; 8];
        let error = client.read(&mut buf).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn idle_socket_states() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(idle_socket_state(client.as_raw_fd()), IdleSocket::Open);

        server.write_all(b"x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(idle_socket_state(client.as_raw_fd()), IdleSocket::Unusable);

        let client2 = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server2, _) = listener.accept().unwrap();
        drop(server2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(idle_socket_state(client2.as_raw_fd()), IdleSocket::Unusable);
    }
}
