//! A panic on one connection's request path closes that connection only: the core keeps
//! running, its other connections keep their keep-alive sessions, and new connections are
//! served. A core that cannot start ends the proxy with its error at once. The fault is injected through the `fault-injection` feature (src/fault.rs); run
//! with `cargo test -p portcullis-dataplane --features fault-injection --test panic_containment`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use portcullis_dataplane::fault::PANIC_PATH;
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

fn metric(proxy: &Proxy, name: &str) -> u64 {
    let (status, body) = proxy.admin_get("/metrics").unwrap();
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

#[test]
fn a_panicking_request_closes_only_its_own_connection() {
    let backend = Backend::start("b");
    let port = free_port();
    let config = ConfigBuilder::catch_all(&backend, port).build();
    // One core: every connection below lives on the core that takes the panic.
    let proxy = Proxy::start_with(&config, &["--cores", "1"]);

    let mut bystanders: Vec<Client> = (0..8).map(|_| Client::connect(port)).collect();
    for client in &mut bystanders {
        assert_eq!(client.get("a", "/before").status, 200);
    }
    // A request whose body is still in flight when the fault hits: its upstream exchange is
    // the one state a panic could leave half done.
    let mut streaming = Client::connect(port);
    streaming
        .send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();

    let mut victim = Client::connect(port);
    let path = String::from_utf8(PANIC_PATH.to_vec()).unwrap();
    victim
        .send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    assert!(
        victim.is_closed(Duration::from_secs(5)),
        "the panicking connection stayed open"
    );
    assert!(
        victim.pending().is_empty(),
        "a response came back on the panicking connection: {:?}",
        String::from_utf8_lossy(victim.pending())
    );

    // Everyone else carries on, on the same connections.
    streaming.send(b"world").unwrap();
    let response = streaming.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body"], "helloworld");
    for client in &mut bystanders {
        assert_eq!(client.get("a", "/after").status, 200);
    }
    let mut fresh = Client::connect(port);
    assert_eq!(fresh.get("a", "/fresh").status, 200);

    // It happens again and again without wearing the core down.
    for _ in 0..20 {
        let mut victim = Client::connect(port);
        victim
            .send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        assert!(victim.is_closed(Duration::from_secs(5)));
    }
    for client in &mut bystanders {
        assert_eq!(client.get("a", "/still").status, 200);
    }

    assert_eq!(metric(&proxy, "portcullis_connection_panics_total"), 21);
    assert_eq!(metric(&proxy, "portcullis_cores"), 1);
    // The panicked connections were released: only the live clients remain.
    assert_eq!(
        metric(&proxy, "portcullis_active_connections"),
        bystanders.len() as u64 + 2
    );
    assert!(
        backend
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/__portcullis")),
        "the faulting request reached the backend"
    );
}

#[test]
fn a_panicking_http2_stream_resets_only_itself() {
    let backend = Backend::start("b");
    let port = free_port();
    let config = ConfigBuilder::catch_all(&backend, port).build();
    let proxy = Proxy::start_with(&config, &["--cores", "1"]);
    let path = String::from_utf8(PANIC_PATH.to_vec()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let get = |path: &str| {
            http::Request::builder()
                .uri(format!("http://a{path}"))
                .body(())
                .unwrap()
        };
        let mut sender = sender.ready().await.unwrap();
        let (victim, _) = sender.send_request(get(&path), true).unwrap();
        assert!(victim.await.is_err(), "the panicking stream was answered");
        for _ in 0..3 {
            let mut sender = sender.clone().ready().await.unwrap();
            let (response, _) = sender.send_request(get("/after"), true).unwrap();
            assert_eq!(response.await.unwrap().status(), 200);
        }
    });
    assert_eq!(metric(&proxy, "portcullis_connection_panics_total"), 1);
}

#[test]
fn a_core_that_cannot_start_ends_the_proxy_with_its_error_instead_of_a_hang() {
    // glommio creates a core's executor (io_uring rings, CPU binding) on the core's own
    // thread; when that fails, the proxy used to wait for the core forever, with its admin
    // port bound but unserved. The fault stops core 0 before it starts, as such a failure does.
    let socket_dir = std::env::temp_dir().join(format!("portcullis-core-start-{}", free_port()));
    std::fs::create_dir_all(&socket_dir).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut proxy = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-proxy"))
        .args([
            "--cores",
            "1",
            "--admin-address",
            &admin,
            "--control-socket",
        ])
        .arg(socket_dir.join("control.sock"))
        .env(portcullis_dataplane::fault::CORE_START_ENV, "0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = proxy.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = proxy.kill();
            panic!("the proxy still runs 20 s after its only core failed to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut proxy.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("starting worker core 0 on CPU"),
        "stderr: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&socket_dir);
}
