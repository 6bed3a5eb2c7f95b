//! The hostile HTTP/1.1 corpus (issue 7 item 2): every case in `corpus/*.yaml` is sent to one
//! running proxy, on its own connection, followed by a pipelined canary request, and the
//! proxy's answer and what reached the upstream are checked against the case.
//!
//! Case format (other tools read these files as seed inputs; keep it exactly):
//!
//! ```yaml
//! - name: kebab-case-id            # unique across all files
//!   raw: "POST / HTTP/1.1\r\n..."  # double-quoted; each char U+0000..U+00FF is one byte
//!   expect: {status: 400, close: true}   # first final response; status null: no response
//!   forwarded:                     # exactly what the upstream must receive, canary excluded
//!     - {method: POST, path: /, body: "hello"}
//!   why: "RFC 9112 §6.3"           # optional
//!   known_gap: true                # optional: the proxy is known to fail this case
//! ```
//!
//! For each case the harness sends `raw` and then `GET /hostile-canary/<name> HTTP/1.1` in one
//! write. With `close: true` the response must say `connection: close`, nothing may follow
//! it, the proxy must close, and the canary must never reach the upstream. With
//! `close: false` the canary must be answered 200 and arrive upstream as a request of its
//! own (after a 101 it must instead come back through the tunnel byte for byte), which proves
//! the proxy found the end of `raw` where the case says it ends. Every request the upstream
//! receives must carry at most one framing header, exactly one when it has a body.
//!
//! Failures are collected and reported together at the end; known gaps are listed apart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;
mod upstream;
mod wire;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use portcullis_api::config::{Filter, RequestRedirect, RouteRule};
use serde::Deserialize;

use support::config::{invalid, prefix, route, rule, to};
use support::{ConfigBuilder, Proxy, free_port};
use upstream::{Seen, Upstream, latin1};
use wire::{Conn, show};

const MIN_CASES: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    raw: String,
    expect: Expect,
    forwarded: Vec<Forwarded>,
    #[serde(default)]
    why: Option<String>,
    #[serde(default)]
    known_gap: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    status: Option<u16>,
    close: bool,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Forwarded {
    method: String,
    path: String,
    body: String,
}

impl std::fmt::Display for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self
            .body
            .chars()
            .map(|c| c as u32 as u8)
            .collect::<Vec<u8>>();
        write!(f, "{} {:?} body {}", self.method, self.path, show(&body))
    }
}

/// The corpus notation: each char is one byte.
fn bytes_of(text: &str, what: &str) -> Result<Vec<u8>, String> {
    text.chars()
        .map(|c| {
            u8::try_from(u32::from(c))
                .map_err(|_| format!("{what}: character {c:?} is above U+00FF"))
        })
        .collect()
}

fn is_kebab(name: &str) -> bool {
    !name.is_empty()
        && name.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

struct Loaded {
    file: String,
    case: Case,
    raw: Vec<u8>,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/corpus")
}

/// Loads every corpus file; problems with the files themselves are returned as failures.
fn load(failures: &mut Vec<String>) -> (Vec<Loaded>, Vec<(String, usize)>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read the corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    let mut per_file = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read a corpus file");
        let parsed: Vec<Case> = match serde_saphyr::from_str(&text) {
            Ok(parsed) => parsed,
            Err(e) => {
                failures.push(format!("{file}: not a valid corpus file: {e}"));
                continue;
            }
        };
        per_file.push((file.clone(), parsed.len()));
        for case in parsed {
            let what = format!("{file}:{}", case.name);
            let mut ok = true;
            let mut check = |result: Result<Vec<u8>, String>| match result {
                Ok(bytes) => bytes,
                Err(e) => {
                    failures.push(e);
                    ok = false;
                    Vec::new()
                }
            };
            let raw = check(bytes_of(&case.raw, &format!("{what} raw")));
            for (i, f) in case.forwarded.iter().enumerate() {
                for (field, value) in [("method", &f.method), ("path", &f.path), ("body", &f.body)]
                {
                    check(bytes_of(value, &format!("{what} forwarded[{i}].{field}")));
                }
            }
            if !is_kebab(&case.name) {
                failures.push(format!("{what}: name is not kebab-case"));
                ok = false;
            }
            if ok {
                cases.push(Loaded {
                    file: file.clone(),
                    case,
                    raw,
                });
            }
        }
    }
    (cases, per_file)
}

/// The proxy config the corpus assumes:
/// - hosts a, b, example.com, *.example.com and localhost: the upstream;
/// - any host (an empty one, an IP literal) on paths under /anyhost: the upstream;
/// - redirect.test: a 302 to http://a/ answered by the proxy;
/// - invalid.test: a rule whose only backend is invalid, answered 500 by the proxy;
/// - anything else (nowhere.test): 404 answered by the proxy.
fn config(upstream: &Upstream, port: u16) -> portcullis_api::CompiledConfig {
    let endpoint = upstream.addr.to_string();
    let redirect = RouteRule {
        filters: vec![Filter::RequestRedirect(RequestRedirect {
            scheme: None,
            hostname: Some("a".into()),
            port: None,
            path: None,
            status_code: 302,
        })],
        ..Default::default()
    };
    ConfigBuilder::new(1)
        .backend_at("ns/strict:80", &[endpoint.as_str()])
        .http_port(
            port,
            "http",
            vec![
                route(
                    "ns/main",
                    &["a", "b", "example.com", "*.example.com", "localhost"],
                    vec![rule(vec![], vec![to("ns/strict:80", 1)])],
                ),
                route(
                    "ns/anyhost",
                    &[],
                    vec![rule(vec![prefix("/anyhost")], vec![to("ns/strict:80", 1)])],
                ),
                route("ns/redirect", &["redirect.test"], vec![redirect]),
                route(
                    "ns/invalid",
                    &["invalid.test"],
                    vec![rule(vec![], vec![invalid("no such Service", 1)])],
                ),
            ],
        )
        .settings(|s| {
            // Cases that leave the proxy waiting cost one of these each.
            s.header_read_timeout_ms = 1500;
            s.body_idle_timeout_ms = 1500;
        })
        .build()
}

fn canary(name: &str) -> (String, Vec<u8>) {
    let path = format!("/hostile-canary/{name}");
    let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes();
    (path, raw)
}

/// Whether the request in `raw` (after any leading empty lines) is a HEAD.
fn is_head(raw: &[u8]) -> bool {
    let start = raw
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(raw.len());
    raw[start..].starts_with(b"HEAD ")
}

/// Runs one case; returns what went wrong.
fn run_case(port: u16, upstream: &Upstream, loaded: &Loaded) -> Vec<String> {
    let case = &loaded.case;
    let mut problems = Vec::new();
    let (canary_path, canary_raw) = canary(&case.name);
    let mark = upstream.mark();

    let mut conn = match Conn::connect(port) {
        Ok(conn) => conn,
        Err(e) => return vec![e],
    };
    let mut bytes = loaded.raw.clone();
    bytes.extend_from_slice(&canary_raw);
    // An early rejection may close before everything is written; the answer still counts.
    let _ = conn.send(&bytes);

    let mut upgraded = false;
    match conn.read_final(is_head(&loaded.raw)) {
        Err(e) => problems.push(format!("first response: {e}")),
        Ok(None) => {
            if let Some(status) = case.expect.status {
                problems.push(format!("closed without a response, expected {status}"));
            }
        }
        Ok(Some(first)) => {
            match case.expect.status {
                None => problems.push(format!(
                    "got a {} response, expected none at all",
                    first.status
                )),
                Some(status) if status != first.status => problems.push(format!(
                    "status {} instead of {status} (body {})",
                    first.status,
                    show(&first.body)
                )),
                Some(_) => {}
            }
            if case.expect.close {
                if !first.closes() {
                    problems.push(format!(
                        "{} without connection: close (headers {:?})",
                        first.status, first.headers
                    ));
                }
            } else if first.closes() {
                problems.push(format!("{} with connection: close", first.status));
            }
            upgraded = first.status == 101;
            if !case.expect.close {
                if upgraded {
                    // The canary went into the tunnel and must come back unchanged.
                    match conn.read_raw(canary_raw.len()) {
                        Ok(echo) if echo == canary_raw => {}
                        Ok(echo) => problems.push(format!(
                            "tunnel returned {} instead of the canary",
                            show(&echo)
                        )),
                        Err(e) => problems.push(format!("tunnel: {e}")),
                    }
                } else {
                    let mut response = Some(first);
                    let mut answered = false;
                    for _ in 0..8 {
                        let Some(r) = response.take() else { break };
                        if r.header("x-path") == Some(canary_path.as_str()) {
                            if r.status != 200 {
                                problems.push(format!("canary answered {}", r.status));
                            }
                            answered = true;
                            break;
                        }
                        match conn.read_final(false) {
                            Ok(Some(next)) => response = Some(next),
                            Ok(None) => {
                                problems.push("closed before the canary was answered".into());
                                break;
                            }
                            Err(e) => {
                                problems.push(format!("waiting for the canary: {e}"));
                                break;
                            }
                        }
                    }
                    if !answered && problems.is_empty() {
                        problems.push("the canary was never answered".into());
                    }
                }
            }
        }
    }
    if case.expect.close {
        match conn.rest_until_close() {
            Ok(rest) if rest.is_empty() => {}
            Ok(rest) => problems.push(format!("bytes after the last response: {}", show(&rest))),
            Err(e) => problems.push(format!("connection not closed: {e}")),
        }
    }
    drop(conn);

    let (seen, violations) = upstream.since(mark);
    for violation in violations {
        problems.push(format!("non-canonical upstream request: {violation}"));
    }
    let mut expected = case.forwarded.clone();
    if !case.expect.close && !upgraded && case.expect.status.is_some() {
        expected.push(Forwarded {
            method: "GET".into(),
            path: canary_path.clone(),
            body: String::new(),
        });
    }
    let got: Vec<Forwarded> = seen
        .iter()
        .map(|s| Forwarded {
            method: latin1(&s.method),
            path: latin1(&s.target),
            body: latin1(&s.body),
        })
        .collect();
    if got != expected {
        let list = |items: &[Forwarded]| {
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        problems.push(format!(
            "upstream received [{}], expected [{}]",
            list(&got),
            list(&expected)
        ));
    }
    for s in &seen {
        check_framing(s, &mut problems);
    }
    problems
}

/// One framing header at most, exactly one for a body, and it must describe the body.
fn check_framing(seen: &Seen, problems: &mut Vec<String>) {
    let lengths = seen.count("content-length");
    let codings = seen.count("transfer-encoding");
    let what = latin1(&seen.target);
    if lengths + codings > 1 || (!seen.body.is_empty() && lengths + codings != 1) {
        problems.push(format!(
            "upstream request {what:?} has {lengths} content-length and {codings} transfer-encoding headers"
        ));
    }
    if lengths == 1 && seen.header("content-length") != Some(seen.body.len().to_string().as_bytes())
    {
        problems.push(format!(
            "upstream request {what:?}: content-length is not the body length"
        ));
    }
}

#[test]
fn hostile_corpus() {
    let started = Instant::now();
    let mut failures = Vec::new();
    let (cases, per_file) = load(&mut failures);

    let mut names = HashSet::new();
    for loaded in &cases {
        if !names.insert(loaded.case.name.as_str()) {
            failures.push(format!(
                "{}: duplicate case name {:?}",
                loaded.file, loaded.case.name
            ));
        }
    }
    if cases.len() < MIN_CASES {
        failures.push(format!(
            "only {} cases; the corpus needs at least {MIN_CASES}",
            cases.len()
        ));
    }

    let upstream = Upstream::start();
    let port = free_port();
    let proxy = Proxy::start(&config(&upstream, port));

    let mut gaps = Vec::new();
    let mut fixed_gaps = Vec::new();
    for loaded in &cases {
        let problems = run_case(port, &upstream, loaded);
        let why = loaded
            .case
            .why
            .as_deref()
            .map(|why| format!(" [why: {why}]"))
            .unwrap_or_default();
        let id = format!("{}:{}", loaded.file, loaded.case.name);
        match (loaded.case.known_gap, problems.is_empty()) {
            (false, true) => {}
            (false, false) => failures.push(format!("{id}: {}{why}", problems.join(" | "))),
            (true, false) => gaps.push(format!("{id}: {}{why}", problems.join(" | "))),
            (true, true) => fixed_gaps.push(id),
        }
    }
    for id in fixed_gaps {
        failures.push(format!("{id}: passes now; remove its known_gap"));
    }

    eprintln!(
        "hostile corpus: {} cases in {:.1} s; per file: {}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        per_file
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !gaps.is_empty() {
        eprintln!("known gaps ({}):\n  {}", gaps.len(), gaps.join("\n  "));
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n  {}\nproxy stderr (tail):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n  "),
        proxy
            .stderr()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
