//! The proxy process's life: readiness before and after the first config, the admin endpoint
//! (metrics, redacted config dump), draining on SIGTERM with and without a drain timeout, and
//! start-up failures that exit non-zero with one clear line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::TcpStream;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use portcullis_api::CompiledConfig;
use portcullis_api::config::{PortProtocol, REDACTED};
use portcullis_api::frame::Reply;
use support::client::tls_client_config;
use support::config::{listener, prefix, regex, route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

fn web_config(generation: u64, port: u16, backend: &Backend) -> CompiledConfig {
    ConfigBuilder::new(generation)
        .backend("ns/web:80", &[backend])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/web",
                &[],
                vec![rule(vec![prefix("/")], vec![to("ns/web:80", 1)])],
            )],
        )
        .build()
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the backend has received `count` requests.
fn wait_for_requests(backend: &Backend, count: usize) {
    assert!(
        eventually(Duration::from_secs(5), || backend.request_count() >= count),
        "the backend got {} requests, expected {count}",
        backend.request_count()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Readiness
// ---------------------------------------------------------------------------------------------

#[test]
fn ready_only_after_the_first_config() {
    let web = Backend::start("web");
    let port = free_port();
    let proxy = Proxy::spawn(None, &["--cores", "1"]);
    assert!(
        eventually(Duration::from_secs(10), || proxy
            .admin_get("/live")
            .is_ok_and(|(status, _)| status == 200)),
        "/live never answered 200; stderr:\n{}",
        proxy.stderr()
    );
    for _ in 0..5 {
        assert_eq!(proxy.admin_get("/ready").unwrap().0, 503);
        assert_eq!(proxy.admin_get("/live").unwrap().0, 200);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.admin_get("/config_dump").unwrap().0, 404);
    assert_eq!(proxy.metric("portcullis_ready", ""), 0.0);
    assert_eq!(proxy.metric("portcullis_config_generation", ""), -1.0);

    assert_eq!(
        proxy.push(&web_config(1, port, &web)),
        Reply::Ack { generation: 1 }
    );
    assert_eq!(proxy.admin_get("/ready").unwrap().0, 200);
    assert_eq!(proxy.admin_get("/live").unwrap().0, 200);
    assert_eq!(proxy.metric("portcullis_ready", ""), 1.0);
    assert_eq!(Client::connect(port).get("l.test", "/").status, 200);
}

// ---------------------------------------------------------------------------------------------
// 2. Metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_count_requests_by_listener_route_and_status_class() {
    let web = Backend::start("web");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/web:80", &[&web])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/web",
                &[],
                vec![rule(vec![prefix("/status")], vec![to("ns/web:80", 1)])],
            )],
        )
        .build();
    let proxy = Proxy::start(&config);
    let mut client = Client::connect(port);
    for _ in 0..3 {
        assert_eq!(client.get("m.test", "/status/200").status, 200);
    }
    assert_eq!(client.get("m.test", "/status/503").status, 503);
    assert_eq!(client.get("m.test", "/elsewhere").status, 404);

    let (status, body) = proxy.admin_get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains(
            "portcullis_requests_total{listener=\"http\",route=\"ns/web\",status_class=\"2xx\"} 3"
        ),
        "{body}"
    );
    assert!(
        body.contains(
            "portcullis_requests_total{listener=\"http\",route=\"ns/web\",status_class=\"5xx\"} 1"
        ),
        "{body}"
    );
    assert!(
        proxy.metric(
            "portcullis_requests_total",
            "listener=\"http\",route=\"\",status_class=\"4xx\""
        ) >= 1.0,
        "{body}"
    );
    assert!(body.contains("# TYPE portcullis_active_connections gauge"));
    // The client's keep-alive connection is open.
    assert_eq!(proxy.metric("portcullis_active_connections", ""), 1.0);
    drop(client);
    assert!(
        eventually(Duration::from_secs(3), || proxy
            .metric("portcullis_active_connections", "")
            == 0.0),
        "the closed connection is still counted as active"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Config dump
// ---------------------------------------------------------------------------------------------

#[test]
fn config_dump_shows_the_active_config_without_private_keys() {
    let web = Backend::start("web");
    let port = free_port();
    let certified = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let config = ConfigBuilder::new(3)
        .backend("ns/web:80", &[&web])
        .certificate("ns/a-cert", &cert_pem, &key_pem)
        .port(
            port,
            PortProtocol::Https,
            vec![listener(
                "https",
                Some("a.example"),
                &["ns/a-cert"],
                vec![route(
                    "ns/web",
                    &[],
                    vec![rule(vec![], vec![to("ns/web:80", 1)])],
                )],
            )],
        )
        .build();
    let proxy = Proxy::start(&config);

    let (status, body) = proxy.admin_get("/config_dump").unwrap();
    assert_eq!(status, 200);
    assert!(
        !body.contains("PRIVATE KEY"),
        "a private key leaked:\n{body}"
    );
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["generation"], 3);
    assert_eq!(dump["ports"][0]["port"], port);
    assert_eq!(dump["ports"][0]["protocol"], "HTTPS");
    assert_eq!(dump["certificates"][0]["name"], "ns/a-cert");
    assert_eq!(dump["certificates"][0]["private_key_pem"], REDACTED);
    assert_eq!(dump["certificates"][0]["cert_chain_pem"], cert_pem.as_str());
    // Apart from the key, the dump is the pushed config.
    let decoded: CompiledConfig = serde_json::from_value(dump).unwrap();
    assert_eq!(decoded, config.redacted());

    // The key itself is still in use.
    let tls = tls_client_config(&[certified.cert.der().clone()], &[b"http/1.1"]);
    let mut client = Client::connect_tls(port, "a.example", tls).unwrap();
    assert_eq!(client.get("a.example", "/").backend(), Some("web"));
}

// ---------------------------------------------------------------------------------------------
// 4. and 5. Drain
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let web = Backend::start("web");
    let port = free_port();
    let mut proxy = Proxy::start_with(
        &web_config(1, port, &web),
        &["--cores", "2", "--drain-timeout", "10"],
    );
    let mut idle = Client::connect(port);
    assert_eq!(idle.get("d.test", "/warm-up").status, 200);
    // Long enough for the idle connection to park (drop its serving state and wait on the
    // socket alone): a drain must reach parked connections too.
    std::thread::sleep(Duration::from_millis(400));
    let in_flight = std::thread::spawn(move || {
        let mut client = Client::connect(port);
        let response = client.get("d.test", "/sleep/2000");
        let closed = client.is_closed(Duration::from_secs(3));
        (response, closed, Instant::now())
    });
    wait_for_requests(&web, 2);

    let sigterm = Instant::now();
    proxy.terminate();

    // New connections are refused shortly after SIGTERM.
    assert!(
        eventually(Duration::from_secs(1), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "port {port} still accepts connections 1 s after SIGTERM"
    );
    let refused_after = sigterm.elapsed();
    // While draining, the proxy is not ready (and still live).
    assert!(
        eventually(Duration::from_secs(1), || proxy
            .admin_get("/ready")
            .is_ok_and(|(status, _)| status == 503)),
        "/ready did not turn 503 during the drain"
    );

    // The idle keep-alive connection is closed at once, not after its idle timeout (60 s).
    assert!(idle.is_closed(Duration::from_secs(5)));
    let idle_closed_after = sigterm.elapsed();
    assert!(
        idle_closed_after < Duration::from_millis(1500),
        "the idle connection was closed {idle_closed_after:?} after SIGTERM"
    );

    let (response, closed, finished) = in_flight.join().unwrap();
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.backend(), Some("web"));
    assert!(closed, "the proxy kept the drained connection open");
    assert!(finished.duration_since(sigterm) >= Duration::from_millis(1000));

    let status = proxy.wait(Duration::from_secs(8));
    let exited_after = sigterm.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}; stderr:\n{}",
        proxy.stderr()
    );
    assert!(
        exited_after < Duration::from_secs(4),
        "exited {exited_after:?} after SIGTERM"
    );
    assert!(refused_after < Duration::from_secs(1));
}

#[test]
fn responses_finished_during_a_drain_announce_the_close() {
    let web = Backend::start("web");
    let port = free_port();
    let mut proxy = Proxy::start_with(
        &web_config(1, port, &web),
        &["--cores", "1", "--drain-timeout", "10"],
    );
    let in_flight = std::thread::spawn(move || {
        let mut client = Client::connect(port);
        client.get("d.test", "/sleep/1500")
    });
    wait_for_requests(&web, 1);
    proxy.terminate();
    let response = in_flight.join().unwrap();
    assert_eq!(response.status, 200);
    assert!(
        proxy
            .wait(Duration::from_secs(8))
            .is_some_and(|s| s.success())
    );
    // architecture.md, Shutdown: "answer in-flight requests with `connection: close`".
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "headers of the response finished during the drain: {:?}",
        response.headers
    );
}

#[test]
fn drain_timeout_bounds_the_exit() {
    let web = Backend::start("web");
    let port = free_port();
    let mut proxy = Proxy::start_with(
        &web_config(1, port, &web),
        &["--cores", "2", "--drain-timeout", "1"],
    );
    let _in_flight = std::thread::spawn(move || {
        let mut client = Client::connect(port);
        let _ = client.send(b"GET /sleep/5000 HTTP/1.1\r\nHost: d.test\r\n\r\n");
        let _ = client.read_response(false);
    });
    wait_for_requests(&web, 1);
    let sigterm = Instant::now();
    proxy.terminate();
    let status = proxy.wait(Duration::from_secs(6));
    let exited_after = sigterm.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?} ({exited_after:?} after SIGTERM); stderr:\n{}",
        proxy.stderr()
    );
    assert!(
        exited_after < Duration::from_millis(2500),
        "exited {exited_after:?} after SIGTERM with --drain-timeout 1"
    );
}

/// Once the process has exited, its ports refuse connections at once. The kernel tears an
/// exited process's io_uring rings down asynchronously, and an accept still in flight there
/// would keep the listening socket alive (completing handshakes nobody accepts) for a while
/// after `wait` returned, unless the drain closes the listeners itself.
#[test]
fn an_exited_proxy_listens_nowhere() {
    let web = Backend::start("web");
    for round in 0..10 {
        let port = free_port();
        let mut proxy = Proxy::start_with(
            &web_config(1, port, &web),
            &["--cores", "2", "--drain-timeout", "0"],
        );
        assert_eq!(Client::connect(port).get("x.test", "/").status, 200);
        proxy.terminate();
        let status = proxy.wait(Duration::from_secs(5));
        assert!(status.is_some_and(|s| s.success()), "{}", proxy.stderr());
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still accepts after the proxy exited (round {round})"
        );
    }
}

/// With a drain delay the proxy stays reachable for a while after SIGTERM, reports not ready,
/// and answers with `connection: close`, so clients move to other replicas before the
/// listeners close.
#[test]
fn drain_delay_keeps_accepting_while_announcing_the_close() {
    let web = Backend::start("web");
    let port = free_port();
    let mut proxy = Proxy::start_with(
        &web_config(1, port, &web),
        &[
            "--cores",
            "2",
            "--drain-delay",
            "1.5",
            "--drain-timeout",
            "5",
        ],
    );
    let mut idle = Client::connect(port);
    assert_eq!(idle.get("d.test", "/").status, 200);
    let mut quiet = Client::connect(port);
    assert_eq!(quiet.get("d.test", "/").status, 200);
    let sigterm = Instant::now();
    proxy.terminate();
    assert!(
        eventually(Duration::from_millis(800), || {
            proxy
                .admin_get("/ready")
                .map(|(s, _)| s == 503)
                .unwrap_or(false)
        }),
        "not ready right after SIGTERM"
    );
    // An idle keep-alive connection is not closed under the client (its next request could be
    // on the way): it gets an answer that announces the close.
    let last = idle.get("d.test", "/");
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(idle.is_closed(Duration::from_secs(1)));
    // Still accepting, but every response announces the close.
    let mut late = Client::connect(port);
    let response = late.get("d.test", "/");
    assert!(sigterm.elapsed() < Duration::from_millis(1500));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        eventually(Duration::from_secs(3), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "listeners close after the delay"
    );
    assert!(
        quiet.is_closed(Duration::from_secs(1)),
        "an idle connection that was never used again closes with the listeners"
    );
    assert!(
        sigterm.elapsed() >= Duration::from_millis(1400),
        "not before the delay"
    );
    let status = proxy.wait(Duration::from_secs(6));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        proxy.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Start-up failures
// ---------------------------------------------------------------------------------------------

/// A config with one HTTP port whose only route has `rule`.
fn config_with_rule(rule: portcullis_api::config::RouteRule, backend: &Backend) -> CompiledConfig {
    ConfigBuilder::new(1)
        .backend("ns/web:80", &[backend])
        .http_port(free_port(), "http", vec![route("ns/web", &[], vec![rule])])
        .build()
}

/// Runs the proxy binary with `args` and returns its exit status and stderr; it must exit
/// within 10 s.
fn run_proxy(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-proxy"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "portcullis-proxy {args:?} did not exit; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts a failed start: non-zero exit, and exactly one line on stderr that is not a JSON log
/// record, naming the program and containing every one of `expected`.
fn assert_start_fails(args: &[&str], expected: &[&str]) {
    let (status, stderr) = run_proxy(args);
    assert!(
        !status.success(),
        "{args:?} exited with {status}; stderr:\n{stderr}"
    );
    let plain: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('{'))
        .collect();
    assert_eq!(plain.len(), 1, "{args:?}: stderr:\n{stderr}");
    let line = plain[0];
    assert!(line.starts_with("portcullis-proxy: "), "{args:?}: {line}");
    for word in expected {
        assert!(line.contains(word), "{args:?}: {line:?} lacks {word:?}");
    }
}

#[test]
fn start_up_failures_exit_non_zero_with_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("portcullis-lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let socket = socket.to_str().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());

    // Nothing to serve.
    assert_start_fails(
        &["--admin-address", &admin, "--cores", "1"],
        &["--config", "--control-socket"],
    );

    // A --config file the proxy refuses.
    let web = Backend::start("web");
    let config_path = dir.join("unknown-backend.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec(&config_with_rule(
            rule(vec![], vec![to("ns/nope:80", 1)]),
            &web,
        ))
        .unwrap(),
    )
    .unwrap();
    let rejected = |path: &std::path::Path| {
        [
            "--config".to_string(),
            path.to_str().unwrap().to_string(),
            "--admin-address".to_string(),
            admin.clone(),
            "--bind-address".to_string(),
            "127.0.0.1".to_string(),
            "--cores".to_string(),
            "1".to_string(),
        ]
    };
    let args = rejected(&config_path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_start_fails(&args, &["--config file was rejected", "ns/nope:80"]);

    // A bad regex in the --config file: refused with a message that says so. (That the message
    // is one line is checked by `a_bad_regex_in_the_config_file_is_reported_on_one_line`.)
    let config_path = dir.join("bad-regex.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec(&config_with_rule(
            rule(vec![regex("/([a-z")], vec![to("ns/web:80", 1)]),
            &web,
        ))
        .unwrap(),
    )
    .unwrap();
    let args = rejected(&config_path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, stderr) = run_proxy(&args);
    assert!(!status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("portcullis-proxy: "))
        .unwrap_or_else(|| panic!("no error line; stderr:\n{stderr}"));
    assert!(
        line.contains("the --config file was rejected")
            && line.contains("invalid regular expression"),
        "{line}"
    );

    // No cores.
    assert_start_fails(
        &[
            "--control-socket",
            socket,
            "--admin-address",
            &admin,
            "--cores",
            "0",
        ],
        &["--cores"],
    );

    // A CPU outside the affinity mask.
    assert_start_fails(
        &[
            "--control-socket",
            socket,
            "--admin-address",
            &admin,
            "--cpus",
            "999",
        ],
        &["CPU 999"],
    );

    // An admin address another process holds.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_address = held.local_addr().unwrap().to_string();
    assert_start_fails(
        &[
            "--control-socket",
            socket,
            "--admin-address",
            &held_address,
            "--cores",
            "1",
        ],
        &["admin address", &held_address],
    );
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_regex_in_the_config_file_is_reported_on_one_line() {
    let web = Backend::start("web");
    let dir = std::env::temp_dir().join(format!("portcullis-regex-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("bad-regex.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec(&config_with_rule(
            rule(vec![regex("/([a-z")], vec![to("ns/web:80", 1)]),
            &web,
        ))
        .unwrap(),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    assert_start_fails(
        &[
            "--config",
            config_path.to_str().unwrap(),
            "--admin-address",
            &admin,
            "--bind-address",
            "127.0.0.1",
            "--cores",
            "1",
        ],
        &["--config file was rejected", "invalid regular expression"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
