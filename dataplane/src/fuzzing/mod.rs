//! Fuzz entry points, shared by the cargo-fuzz targets in `dataplane/fuzz/` and by the unit
//! tests below, which replay every seed and every saved crash input on plain `cargo test`.
//!
//! | target         | input                                                                 |
//! |----------------|-----------------------------------------------------------------------|
//! | `request_head` | bytes at the start of a connection's receive buffer                   |
//! | `chunked`      | a chunked request or response body                                    |
//! | `connection`   | `[flags, split, client bytes…]`: one downstream connection, see below |
//! | `config_frame` | a control-socket frame (starts with `PCFG`) or a bare JSON payload    |
//! | `route_match`  | a request head, or `method\0host\0target\0name\0value\0…`             |
//! | `client_hello` | the first bytes of a connection to a TLS port (SNI reader)            |
//!
//! Every target panics when an invariant breaks; a panic is a finding. Seeds come from
//! [`seeds()`]: hand-written files in `dataplane/fuzz/seeds/<target>/`, the `raw` requests of
//! the hostile HTTP/1.1 corpus (`dataplane/tests/hostile/corpus/*.yaml`) and configs built
//! here.
//! Crash inputs go to `dataplane/fuzz/regressions/<target>/` and are replayed by the tests.
//!
//! The `connection` target drives [`serve`](crate::proxy::connection::serve) over an in-memory
//! [`Transport`](crate::io::Transport) on one glommio
//! executor per process, against a routing snapshot with local answers (redirects; 404 for
//! hosts under `*.wild.test` outside `/w` and on port 8081; 500; 503) and one upstream: a
//! small blocking HTTP/1.1 server on a loopback thread that checks every request the proxy
//! forwards. Its first input byte selects:
//!
//! - bit 0: TLS-like transport (buffered writes, `https` in forwarding headers and redirects);
//! - bit 1: a port without listeners;
//! - bit 2: an IPv6 peer address;
//! - bits 3-4: how the client's bytes end: EOF, connection reset, read timeout, or EOF with
//!   writes failing after 256 bytes (a client that went away);
//! - bits 5-6: core state: serving (0, 1), announced termination (2), draining (3);
//! - bit 7: every read is pending once before it completes.
//!
//! The second byte sets the read sizes: 0 reads as much as the buffer takes, n reads 1..=n
//! bytes at a time (pseudo-random, seeded by n).

mod chunked;
mod client_hello;
mod config_frame;
mod connection;
mod request_head;
mod route_match;
mod seeds;
mod upstream;

pub use chunked::chunked;
pub use client_hello::{client_hello, rustls_hellos};
pub use config_frame::config_frame;
pub use connection::connection;
pub use request_head::request_head;
pub use route_match::route_match;
pub use seeds::{
    files_in, hand_seeds_dir, hostile_corpus_dir, hostile_raws, regressions_dir, seeds,
    write_seed_corpus, yaml_raws,
};

/// The fuzz targets, by name (the cargo-fuzz target and corpus directory names).
pub const TARGETS: [&str; 6] = [
    "request_head",
    "chunked",
    "connection",
    "config_frame",
    "route_match",
    "client_hello",
];

/// The entry function of a target.
pub fn entry(target: &str) -> Option<fn(&[u8])> {
    Some(match target {
        "request_head" => request_head,
        "chunked" => chunked,
        "connection" => connection,
        "config_frame" => config_frame,
        "route_match" => route_match,
        "client_hello" => client_hello,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `target` over its seeds and its saved crash inputs.
    pub(super) fn replay(target: &str) {
        let Some(run) = entry(target) else {
            panic!("unknown target {target}");
        };
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for (i, seed) in seeds.iter().enumerate() {
            let result = std::panic::catch_unwind(|| run(seed));
            assert!(
                result.is_ok(),
                "{target} seed {i} failed: {:?}",
                String::from_utf8_lossy(&seed[..seed.len().min(200)])
            );
        }
        for path in files_in(&regressions_dir(target)) {
            let input = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| run(&input));
            assert!(result.is_ok(), "regression {} failed", path.display());
        }
    }

    #[test]
    fn fuzzing_targets_survive_garbage() {
        let inputs: [&[u8]; 7] = [
            b"",
            b"\0",
            b"\x01\x02GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n",
            b"PCFG",
            b"PCFG\0\x01\0\0\0\0\0\x02",
            b"PCFG\0\x02\0\0\0\0\0\x02\0\0",
            &[0xff; 300],
        ];
        for target in TARGETS {
            let run = entry(target).unwrap();
            for input in inputs {
                run(input);
            }
        }
    }
}
