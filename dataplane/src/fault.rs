//! Faults injected on purpose, so tests can prove what a bug on the request path takes down
//! and what it does not. Compiled in only with the `fault-injection` feature: release builds
//! carry no trigger at all.

/// A request for this path panics inside its connection's task.
#[cfg(feature = "fault-injection")]
pub const PANIC_PATH: &[u8] = b"/__portcullis/fault/panic";

/// Called with each request's path once its head is parsed.
#[inline(always)]
pub fn on_request(path: &[u8]) {
    #[cfg(feature = "fault-injection")]
    if path == PANIC_PATH {
        panic!("injected fault: {}", String::from_utf8_lossy(path));
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = path;
}

/// Environment variable naming a worker core (by index) that stops before it starts, as one
/// whose executor cannot be created would.
#[cfg(feature = "fault-injection")]
pub const CORE_START_ENV: &str = "PORTCULLIS_FAULT_CORE_START";

/// Whether worker core `id` is to stop before it starts.
pub fn core_start_fails(id: usize) -> bool {
    #[cfg(feature = "fault-injection")]
    return std::env::var(CORE_START_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(id);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = id;
        false
    }
}
