//! Structured logs: one JSON object per line on stderr.
//!
//! The proxy logs rarely (start, config swaps, errors worth an operator's attention), never
//! per request; per-request records go to the access log.

use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

// Read on log calls only, which are off the request path.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// At most one line of a throttled kind this often, whatever the rate of what it reports.
pub const LOG_INTERVAL_SECS: u64 = 10;

/// Keeps a kind of warning that traffic can trigger (a backend's TLS failures, UDP sessions
/// that cannot open) to one line per [`LOG_INTERVAL_SECS`], counting what it swallowed. One
/// per core and kind: it is not shared between threads.
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// The `coarse_now` of the last line, plus one so that 0 means "never logged".
    last: Cell<u64>,
    suppressed: Cell<u64>,
}

impl LogThrottle {
    /// Some(occurrences not logged since the last line) when this one should be logged.
    pub fn due_now(&self) -> Option<u64> {
        self.due(coarse_now())
    }

    fn due(&self, now: u64) -> Option<u64> {
        let last = self.last.get();
        if last != 0 && now + 1 < last + LOG_INTERVAL_SECS {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.last.set(now + 1);
        Some(self.suppressed.replace(0))
    }
}

/// Seconds since the epoch: coarse is enough for a log limit.
fn coarse_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Writes one log line. `fields` are extra key/value pairs (values are JSON-escaped strings).
pub fn emit(level: Level, message: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    if !enabled(level) {
        return;
    }
    let mut line = String::with_capacity(128);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    line.push_str(&format!(
        "{{\"ts\":{}.{:03}",
        now.as_secs(),
        now.subsec_millis()
    ));
    line.push_str(",\"level\":");
    push_json_string(&mut line, level_name(level));
    line.push_str(",\"msg\":");
    push_json_string(&mut line, message);
    for (key, value) in fields {
        line.push(',');
        push_json_string(&mut line, key);
        line.push(':');
        push_json_string(&mut line, &value.to_string());
    }
    line.push_str("}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[macro_export]
macro_rules! log_at {
    ($level:expr, $msg:expr $(, $key:literal = $value:expr)* $(,)?) => {
        $crate::log::emit($level, $msg, &[$(($key, &$value as &dyn ::std::fmt::Display)),*])
    };
}

#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Info, $($t)*) };
}

#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Warn, $($t)*) };
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Error, $($t)*) };
}

#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Debug, $($t)*) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}");
        assert_eq!(out, r#""a\"b\\c\nd\u0001""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}");
    }

    #[test]
    fn throttled_lines_come_once_per_interval_with_what_they_swallowed() {
        let log = LogThrottle::default();
        assert_eq!(log.due(1000), Some(0));
        assert_eq!(log.due(1000), None);
        assert_eq!(log.due(1000 + LOG_INTERVAL_SECS - 1), None);
        assert_eq!(log.due(1000 + LOG_INTERVAL_SECS), Some(2));
        assert_eq!(log.due(1000 + LOG_INTERVAL_SECS), None);
    }
}
