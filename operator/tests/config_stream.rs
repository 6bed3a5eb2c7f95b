//! The config stream end to end without a cluster: the config server in-process on loopback
//! (a test CA, a fake Authenticator standing in for TokenReview), `portcullis agent` as the
//! built binary, a real `portcullis-proxy` and HTTP backends on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{PORTCULLIS, proxy_bin};

use portcullis_api::CompiledConfig;
use portcullis_operator::compile::{ObjectKey, compile};
use portcullis_operator::distribute::agent::LAST_GOOD_FILE;
use portcullis_operator::distribute::ca::{CertificateAuthority, ServingCertificate};
use portcullis_operator::distribute::gzip;
use portcullis_operator::distribute::hub::{ConfigHub, PodReport};
use portcullis_operator::distribute::proto::agent_message::Message;
use portcullis_operator::distribute::proto::config_stream_client::ConfigStreamClient;
use portcullis_operator::distribute::proto::{AgentMessage, Hello, Update};
use portcullis_operator::distribute::server::{
    AuthError, Authenticator, ConfigService, Identity, ServerOptions, serve,
};
use portcullis_operator::objects::{Loaded, load_str};
use portcullis_operator::telemetry::{Metrics, StreamMetrics};

const POD: &str = "gw-portcullis-abc";
const POD_UID: &str = "uid-1";
const TOKEN: &str = "token-of-gw";
const OTHER_GATEWAY_TOKEN: &str = "token-of-other";

use portcullis_testkit::free_port;

/// Polls `check` until it returns Some, for at most `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-stream-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP/1.1 backend answering every request with `x-backend: NAME`.
struct Backend {
    name: &'static str,
    port: u16,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve_backend(stream, name));
            }
        });
        Backend { name, port }
    }
}

fn serve_backend(stream: TcpStream, name: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim_end().is_empty() {
                break;
            }
        }
        let text = format!("hello from {name}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nx-backend: {name}\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// One GET with `connection: close`: (status, x-backend, body).
fn http_get(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no head in {response:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad head {head:?}")))?;
    let backend = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-backend"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, backend, body.to_string()))
}

/// The backend the Gateway routes web.example.com to, once it answers 200.
fn served_backend(port: u16) -> Option<String> {
    match http_get(port, "web.example.com", "/") {
        Ok((200, backend, _)) => Some(backend),
        _ => None,
    }
}

fn wait_for_backend(port: u16, backend: &str) {
    wait_until(
        &format!("backend {backend} behind port {port}"),
        Duration::from_secs(20),
        || (served_backend(port).as_deref() == Some(backend)).then_some(()),
    );
}

/// Gateway infra/gw (listeners on `ports`) routing web.example.com to `backend`, compiled by
/// the real compiler.
fn config(ports: &[u16], backend: &Backend) -> CompiledConfig {
    let listeners: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "  - {{name: l{i}, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}\n"
            )
        })
        .collect();
    let yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra}}
spec:
  gatewayClassName: portcullis
  listeners:
{listeners}---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: app}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: app, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {backend_port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: app}}
spec:
  parentRefs: [{{name: gw, namespace: infra}}]
  hostnames: [web.example.com]
  rules:
  - backendRefs: [{{name: {name}, port: 80}}]
"#,
        name = backend.name,
        backend_port = backend.port,
    );
    let mut loaded = Loaded::default();
    load_str(&yaml, "test", &mut loaded).unwrap();
    let output = compile(&loaded.input);
    output.gateways[&gateway()]
        .config
        .clone()
        .expect("the Gateway compiles")
}

fn gateway() -> ObjectKey {
    ObjectKey::new("infra", "gw")
}

/// Stands in for TokenReview: fixed tokens.
struct FakeAuthenticator(HashMap<&'static str, Identity>);

impl FakeAuthenticator {
    fn new() -> Self {
        let identity = |service_account: &str| Identity {
            namespace: "infra".into(),
            service_account: service_account.into(),
            pod_name: Some(POD.into()),
            pod_uid: Some(POD_UID.into()),
        };
        Self(HashMap::from([
            (TOKEN, identity("gw-portcullis")),
            // A pod of Gateway infra/other: its ServiceAccount is other-portcullis.
            (OTHER_GATEWAY_TOKEN, identity("other-portcullis")),
        ]))
    }
}

impl Authenticator for FakeAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.0
            .get(token)
            .cloned()
            .ok_or_else(|| AuthError::Rejected("unknown token".into()))
    }
}

/// The config server on its own runtime thread, with metrics of its own (tests run in
/// parallel).
struct TestServer {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: Metrics,
}

const CONNECTED_AGENTS: &str = "portcullis_operator_connected_agents";
const PUSHES: &str = "portcullis_operator_config_pushes_total";
const ACKS: &str = "portcullis_operator_config_reports_total{result=\"ack\"}";
const NACKS: &str = "portcullis_operator_config_reports_total{result=\"nack\"}";

impl TestServer {
    fn start(port: u16, hub: ConfigHub, ca: &Arc<CertificateAuthority>) -> TestServer {
        let serving =
            Arc::new(ServingCertificate::new(ca.clone(), vec!["127.0.0.1".into()]).unwrap());
        let tls = Arc::new(serving.server_config().unwrap());
        let streams = StreamMetrics::default();
        let metrics = Metrics::with_streams(streams.clone());
        let service = ConfigService::new(
            hub,
            FakeAuthenticator::new(),
            Arc::new(|gateway: &ObjectKey| {
                (gateway.namespace == "infra").then(|| {
                    portcullis_operator::provision::resource_name(&gateway.name, "portcullis")
                })
            }),
            ServerOptions {
                keepalive_interval: Duration::from_secs(2),
                keepalive_timeout: Duration::from_secs(2),
                ..ServerOptions::default()
            },
            streams,
        );
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let (ready, bound) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                let listener = loop {
                    match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                        Ok(listener) => break listener,
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("binding {port}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("binding {port}: {e}"),
                    }
                };
                ready.send(()).unwrap();
                serve(listener, tls, service, async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
            });
        });
        bound.recv_timeout(Duration::from_secs(15)).unwrap();
        TestServer {
            shutdown: Some(shutdown),
            thread: Some(thread),
            metrics,
        }
    }

    /// A value of this server's /metrics text (`name` with its labels, if any).
    fn metric(&self, name: &str) -> i64 {
        let text = self.metrics.render();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|value| value.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Waits until `metric(name)` is `value`.
    fn wait_for_metric(&self, name: &str, value: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.metric(name);
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name} = {value}: it is {now}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child process with its output collected.
struct Process {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Process {
    fn spawn(mut command: Command) -> Process {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn");
        let output = Arc::new(Mutex::new(String::new()));
        let streams = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ];
        for stream in streams {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut output = output.lock().unwrap();
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        Process { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, signal);
    }

    /// SIGTERM, then waits (SIGKILL after 10 s).
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One proxy pod's worth of directories and ports, plus the operator side.
struct Pod {
    dir: TempDir,
    ca: Arc<CertificateAuthority>,
    server_port: u16,
    admin_port: u16,
    gateway_port: u16,
}

impl Pod {
    fn new() -> Pod {
        let dir = TempDir::new();
        let ca = Arc::new(CertificateAuthority::generate().unwrap());
        std::fs::write(dir.0.join("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(dir.0.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::create_dir_all(dir.0.join("run")).unwrap();
        Pod {
            dir,
            ca,
            server_port: free_port(),
            admin_port: free_port(),
            gateway_port: free_port(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("run/control.sock")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.0.join("run/state")
    }

    fn server(&self, hub: &ConfigHub) -> TestServer {
        TestServer::start(self.server_port, hub.clone(), &self.ca)
    }

    /// Starts a proxy and waits for its admin endpoint. A proxy killed just before may still
    /// hold its sockets for a moment (io_uring tears down asynchronously): retry then.
    fn proxy(&self) -> Process {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut command = Command::new(proxy_bin());
            command
                .arg("--control-socket")
                .arg(self.socket())
                .arg("--admin-address")
                .arg(format!("127.0.0.1:{}", self.admin_port))
                .args(["--bind-address", "127.0.0.1", "--cores", "1"]);
            let mut proxy = Process::spawn(command);
            loop {
                if http_get(self.admin_port, "admin", "/live").is_ok() {
                    return proxy;
                }
                let exited = matches!(proxy.child.try_wait(), Ok(Some(_)));
                assert!(
                    Instant::now() < deadline,
                    "the proxy's admin endpoint did not come up; output:\n{}",
                    proxy.output()
                );
                if exited {
                    eprintln!("the proxy exited at start, retrying: {}", proxy.output());
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn agent(&self) -> Process {
        self.agent_with(&[])
    }

    fn agent_with(&self, extra: &[&std::ffi::OsStr]) -> Process {
        let mut command = Command::new(PORTCULLIS);
        command
            .arg("agent")
            .arg(format!(
                "--config-server=https://127.0.0.1:{}",
                self.server_port
            ))
            .arg("--gateway=infra/gw")
            .arg("--token-file")
            .arg(self.dir.0.join("token"))
            .arg("--ca-file")
            .arg(self.dir.0.join("ca.crt"))
            .arg("--control-socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(extra)
            .env("POD_NAME", POD)
            .env("POD_NAMESPACE", "infra")
            .env("POD_UID", POD_UID)
            .env("RUST_LOG", "info");
        Process::spawn(command)
    }

    /// A value of the proxy's /metrics.
    fn metric(&self, name: &str) -> i64 {
        let (_, _, body) = http_get(self.admin_port, "admin", "/metrics").unwrap();
        body.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|value| value.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    }

    fn swaps(&self) -> i64 {
        self.metric("portcullis_config_swaps_total")
    }

    fn generation(&self) -> i64 {
        self.metric("portcullis_config_generation")
    }

    fn persisted(&self) -> Option<CompiledConfig> {
        let bytes = std::fs::read(self.state_dir().join(LAST_GOOD_FILE)).ok()?;
        Some(portcullis_api::frame::decode_json(&bytes).unwrap())
    }
}

/// This pod's report in `hub`, once `accept` holds for it.
fn wait_for_report(hub: &ConfigHub, what: &str, accept: impl Fn(&PodReport) -> bool) -> PodReport {
    wait_until(what, Duration::from_secs(20), || {
        hub.pods(&gateway())
            .into_iter()
            .find(|(pod, _)| pod.name == POD)
            .map(|(_, report)| report)
            .filter(|report| accept(report))
    })
}

fn synced_hub(config: CompiledConfig) -> ConfigHub {
    let hub = ConfigHub::new();
    hub.publish(&gateway(), Some(config));
    hub.set_synced();
    hub
}

#[test]
fn an_agent_serves_its_gateways_config_once_the_operator_is_synced() {
    let pod = Pod::new();
    let a = Backend::start("a");
    let hub = ConfigHub::new();
    let first = config(&[pod.gateway_port], &a);
    hub.publish(&gateway(), Some(first.clone()));
    let server = pod.server(&hub);
    let proxy = pod.proxy();
    assert_eq!(server.metric(CONNECTED_AGENTS), 0);
    let mut agent = pod.agent();

    // Connected, but nothing is sent before the controller's caches have synced.
    let report = wait_for_report(&hub, "the agent's Hello", |r| r.connected);
    assert_eq!(report.applied_hash, None);
    assert_eq!(server.metric(CONNECTED_AGENTS), 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pod.swaps(), 0, "{}", agent.output());
    assert_eq!(server.metric(PUSHES), 0);

    hub.set_synced();
    wait_for_backend(pod.gateway_port, "a");
    let report = wait_for_report(&hub, "the ACK", |r| r.applied_hash.is_some());
    assert_eq!(report.applied_hash, Some(first.content_hash()));
    assert_eq!(report.applied_generation, 1);
    assert_eq!(report.last_error, None);
    assert_eq!(pod.generation(), 1);
    let persisted = pod.persisted().expect("the last good config is persisted");
    assert_eq!(persisted.generation, 1);
    assert_eq!(persisted.content_hash(), first.content_hash());
    assert_eq!(server.metric(PUSHES), 1);
    assert_eq!(server.metric(ACKS), 1);
    assert_eq!(server.metric(NACKS), 0);

    // A frozen agent stops answering HTTP/2 PINGs: the server ends its stream.
    agent.signal(rustix::process::Signal::STOP);
    wait_for_report(&hub, "the dead stream to end", |r| !r.connected);
    server.wait_for_metric(CONNECTED_AGENTS, 0);
    // Thawed, it finds its connection gone and comes back; nothing is pushed again.
    agent.signal(rustix::process::Signal::CONT);
    wait_for_report(&hub, "the reconnect", |r| r.connected);
    server.wait_for_metric(CONNECTED_AGENTS, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pod.swaps(), 1, "{}", agent.output());
    assert_eq!(server.metric(PUSHES), 1);
    assert_eq!(server.metric(CONNECTED_AGENTS), 1);

    // The agent goes away: its stream no longer counts.
    agent.kill();
    server.wait_for_metric(CONNECTED_AGENTS, 0);
    drop(proxy);

    // The agent logs JSON lines, like the operator.
    let output = agent.output();
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the agent logged nothing");
    for line in lines {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            entry.get("level").is_some() && entry.get("fields").is_some(),
            "{line}"
        );
    }
}

/// Opens a stream like an agent would; the first Update, None when nothing came within
/// `wait`, or the call's error.
fn raw_stream(
    port: u16,
    ca_pem: &str,
    token: &str,
    hello: Hello,
    wait: Duration,
) -> Result<Option<Update>, tonic::Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem)),
            )
            .unwrap();
        let channel = endpoint.connect().await.unwrap();
        let mut client = ConfigStreamClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(AgentMessage {
            message: Some(Message::Hello(hello)),
        })
        .await
        .unwrap();
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut inbound = client.stream(request).await?.into_inner();
        match tokio::time::timeout(wait, inbound.message()).await {
            Ok(message) => message,
            Err(_) => Ok(None),
        }
    })
}

fn hello(pod_name: &str) -> Hello {
    Hello {
        schema_version: portcullis_api::config::SCHEMA_VERSION,
        gateway_namespace: "infra".into(),
        gateway_name: "gw".into(),
        pod_name: pod_name.into(),
        pod_namespace: "infra".into(),
        pod_uid: POD_UID.into(),
        agent_version: "test".into(),
        last_applied_generation: 0,
        last_applied_hash: Vec::new(),
    }
}

#[test]
fn only_the_gateways_own_pod_receives_its_config() {
    let pod = Pod::new();
    let a = Backend::start("a");
    let hub = synced_hub(config(&[pod.gateway_port], &a));
    let server = pod.server(&hub);
    let wait = Duration::from_secs(2);

    // The rightful pod gets the config at once.
    let update = raw_stream(pod.server_port, pod.ca.cert_pem(), TOKEN, hello(POD), wait)
        .unwrap()
        .expect("an update");
    assert_eq!(update.generation, 1);
    let sent = portcullis_api::frame::decode_json(&update.config_json).unwrap();
    assert_eq!(sent.generation, 1);
    assert_eq!(sent.content_hash().to_vec(), update.content_hash);

    // A token of another Gateway's ServiceAccount (same namespace, same pod name).
    let status = raw_stream(
        pod.server_port,
        pod.ca.cert_pem(),
        OTHER_GATEWAY_TOKEN,
        hello(POD),
        wait,
    )
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("other-portcullis"), "{status:?}");

    // A Hello naming another pod than the one the token is bound to.
    let status = raw_stream(
        pod.server_port,
        pod.ca.cert_pem(),
        TOKEN,
        hello("gw-portcullis-other"),
        wait,
    )
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("token belongs to pod"),
        "{status:?}"
    );

    // An unknown token, and no token at all.
    let status = raw_stream(
        pod.server_port,
        pod.ca.cert_pem(),
        "forged",
        hello(POD),
        wait,
    )
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // Neither rejected pod left a trace in the hub.
    let pods = hub.pods(&gateway());
    assert!(
        pods.keys().all(|p| p.name == POD),
        "only the rightful pod reported: {pods:?}"
    );
    // Only the rightful pod was sent a config; every stream has ended.
    assert_eq!(server.metric(PUSHES), 1);
    server.wait_for_metric(CONNECTED_AGENTS, 0);
}

#[test]
fn the_agent_with_another_gateways_token_gets_nothing() {
    let pod = Pod::new();
    let a = Backend::start("a");
    let hub = synced_hub(config(&[pod.gateway_port], &a));
    let _server = pod.server(&hub);
    std::fs::write(pod.dir.0.join("token"), OTHER_GATEWAY_TOKEN).unwrap();
    let _proxy = pod.proxy();
    let agent = pod.agent();
    wait_until(
        "the refusal in the agent's log",
        Duration::from_secs(20),
        || agent.output().contains("PermissionDenied").then_some(()),
    );
    assert_eq!(pod.swaps(), 0);
    assert!(hub.pods(&gateway()).is_empty());

    // The kubelet rotates the token to a valid one: the next connect uses it.
    std::fs::write(pod.dir.0.join("token"), TOKEN).unwrap();
    wait_for_backend(pod.gateway_port, "a");
}

#[test]
fn a_nacked_config_is_reported_and_the_last_good_keeps_serving() {
    let pod = Pod::new();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let hub = synced_hub(config(&[pod.gateway_port], &a));
    let server = pod.server(&hub);
    let _proxy = pod.proxy();
    let agent = pod.agent();
    wait_for_backend(pod.gateway_port, "a");
    server.wait_for_metric(ACKS, 1);
    assert_eq!(server.metric(PUSHES), 1);
    assert_eq!(server.metric(NACKS), 0);
    assert_eq!(server.metric(CONNECTED_AGENTS), 1);

    // A second listener on a port someone else holds: the proxy cannot bind it and NACKs.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let bad = config(&[pod.gateway_port, taken], &b);
    hub.publish(&gateway(), Some(bad.clone()));
    let report = wait_for_report(&hub, "the NACK", |r| r.last_error.is_some());
    let error = report.last_error.clone().unwrap();
    assert!(error.contains("cannot listen"), "{error}");
    assert_eq!(report.applied_generation, 1);
    assert_ne!(report.applied_hash, Some(bad.content_hash()));
    assert_eq!(pod.metric("portcullis_config_rejections_total"), 1);
    assert_eq!(server.metric(NACKS), 1);
    assert_eq!(server.metric(ACKS), 1);
    assert_eq!(server.metric(PUSHES), 2);
    for _ in 0..5 {
        assert_eq!(served_backend(pod.gateway_port).as_deref(), Some("a"));
    }
    assert_eq!(pod.persisted().unwrap().generation, 1);
    assert_eq!(pod.generation(), 1);

    // The NACKed content is not offered again; fixed content goes out above it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pod.metric("portcullis_config_rejections_total"), 1);
    assert_eq!(server.metric(PUSHES), 2);
    let good = config(&[pod.gateway_port], &b);
    hub.publish(&gateway(), Some(good.clone()));
    wait_for_backend(pod.gateway_port, "b");
    let report = wait_for_report(&hub, "the ACK", |r| r.last_error.is_none());
    assert_eq!(report.applied_hash, Some(good.content_hash()));
    assert_eq!(report.applied_generation, 3, "{}", agent.output());
    assert_eq!(pod.persisted().unwrap().generation, 3);
    assert_eq!(server.metric(PUSHES), 3);
    assert_eq!(server.metric(ACKS), 2);
    assert_eq!(server.metric(NACKS), 1);
    drop(squatter);
}

#[test]
fn quick_publishes_end_with_the_newest_config() {
    let pod = Pod::new();
    let backends = ["a", "b", "c", "d"].map(Backend::start);
    let hub = synced_hub(config(&[pod.gateway_port], &backends[0]));
    let _server = pod.server(&hub);
    let _proxy = pod.proxy();
    let _agent = pod.agent();
    wait_for_backend(pod.gateway_port, "a");
    let before = pod.swaps();

    let newest = config(&[pod.gateway_port], &backends[3]);
    for backend in &backends[1..] {
        hub.publish(&gateway(), Some(config(&[pod.gateway_port], backend)));
    }
    wait_for_backend(pod.gateway_port, "d");
    let report = wait_for_report(&hub, "the newest ACK", |r| {
        r.applied_hash == Some(newest.content_hash())
    });
    let swaps = pod.swaps() - before;
    assert!((1..=3).contains(&swaps), "{swaps} swaps");
    assert_eq!(pod.generation() as u64, report.applied_generation);
    eprintln!("three quick publishes took {swaps} swap(s)");
}

#[test]
fn an_operator_restart_pushes_nothing_and_generations_continue() {
    let pod = Pod::new();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let hub = synced_hub(config(&[pod.gateway_port], &a));
    let mut server = pod.server(&hub);
    let _proxy = pod.proxy();
    let agent = pod.agent();
    wait_for_backend(pod.gateway_port, "a");
    wait_for_report(&hub, "the ACK", |r| r.applied_hash.is_some());
    let swaps = pod.swaps();
    assert_eq!(server.metric(CONNECTED_AGENTS), 1);

    server.stop();
    wait_for_report(&hub, "the disconnect", |r| !r.connected);
    assert_eq!(
        server.metric(CONNECTED_AGENTS),
        0,
        "the shutdown ended the stream"
    );
    // A new operator process: new hub, the same objects compiled again.
    let hub = synced_hub(config(&[pod.gateway_port], &a));
    let server = pod.server(&hub);
    let report = wait_for_report(&hub, "the reconnect", |r| r.connected);
    assert_eq!(server.metric(CONNECTED_AGENTS), 1);
    assert_eq!(
        report.applied_hash,
        Some(config(&[pod.gateway_port], &a).content_hash()),
        "the Hello says what the proxy serves"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pod.swaps(), swaps, "{}", agent.output());
    assert_eq!(served_backend(pod.gateway_port).as_deref(), Some("a"));
    assert_eq!(server.metric(PUSHES), 0, "nothing pushed after the restart");

    // A real change still goes out, above the generation the proxy serves.
    hub.publish(&gateway(), Some(config(&[pod.gateway_port], &b)));
    wait_for_backend(pod.gateway_port, "b");
    assert_eq!(pod.generation(), 2);
    assert_eq!(pod.swaps(), swaps + 1);
    assert_eq!(server.metric(PUSHES), 1);
}

#[test]
fn a_restarted_pod_serves_the_persisted_config_while_the_operator_is_down() {
    let pod = Pod::new();
    let a = Backend::start("a");
    let hub = synced_hub(config(&[pod.gateway_port], &a));
    let mut server = pod.server(&hub);
    let mut proxy = pod.proxy();
    let mut agent = pod.agent();
    wait_for_backend(pod.gateway_port, "a");
    wait_for_report(&hub, "the ACK", |r| r.applied_hash.is_some());

    // The operator goes away, then the whole pod restarts (the emptyDir survives).
    server.stop();
    agent.stop();
    proxy.stop();
    assert!(served_backend(pod.gateway_port).is_none());
    let mut proxy = pod.proxy();
    let agent = pod.agent();
    wait_for_backend(pod.gateway_port, "a");
    assert_eq!(pod.generation(), 1, "{}", agent.output());

    // The proxy container alone restarts: the running agent notices the new control socket.
    proxy.kill();
    let _proxy = pod.proxy();
    wait_for_backend(pod.gateway_port, "a");
    assert_eq!(pod.generation(), 1, "{}", agent.output());
}

#[test]
fn a_new_pod_starts_from_the_bootstrap_file_while_the_operator_is_down() {
    let pod = Pod::new();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    // What the operator wrote into the Gateway's last-good Secret, as the kubelet mounts it.
    let bootstrap = pod.dir.0.join("config.json.gz");
    let json = serde_json::to_vec(&config(&[pod.gateway_port], &a)).unwrap();
    std::fs::write(&bootstrap, gzip::compress(&json).unwrap()).unwrap();
    let _proxy = pod.proxy();
    let agent = pod.agent_with(&["--bootstrap-file".as_ref(), bootstrap.as_os_str()]);
    wait_for_backend(pod.gateway_port, "a");
    let swaps = pod.swaps();

    // The operator comes back with the same content: nothing is pushed.
    let hub = synced_hub(config(&[pod.gateway_port], &a));
    let _server = pod.server(&hub);
    wait_for_report(&hub, "the connect", |r| r.connected);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pod.swaps(), swaps, "{}", agent.output());

    // A change goes out and becomes the pod's own last good.
    hub.publish(&gateway(), Some(config(&[pod.gateway_port], &b)));
    wait_for_backend(pod.gateway_port, "b");
    wait_until("the persisted config", Duration::from_secs(10), || {
        pod.persisted()
            .filter(|c| c.content_hash() == config(&[pod.gateway_port], &b).content_hash())
    });
}

#[test]
fn a_corrupt_or_missing_bootstrap_file_is_ignored() {
    let pod = Pod::new();
    let a = Backend::start("a");
    let corrupt = pod.dir.0.join("corrupt.json");
    std::fs::write(&corrupt, b"{\"not\": \"a config\"").unwrap();
    let truncated = pod.dir.0.join("truncated.json.gz");
    let json = serde_json::to_vec(&config(&[pod.gateway_port], &a)).unwrap();
    let gzipped = gzip::compress(&json).unwrap();
    std::fs::write(&truncated, &gzipped[..gzipped.len() / 2]).unwrap();
    let missing = pod.dir.0.join("missing.json");
    for bootstrap in [corrupt, truncated, missing] {
        let hub = synced_hub(config(&[pod.gateway_port], &a));
        let _server = pod.server(&hub);
        let _proxy = pod.proxy();
        let agent = pod.agent_with(&["--bootstrap-file".as_ref(), bootstrap.as_os_str()]);
        wait_for_backend(pod.gateway_port, "a");
        assert!(
            agent.output().contains("bootstrap") || !bootstrap.exists(),
            "the agent says why it ignored the file:\n{}",
            agent.output()
        );
        drop(agent);
        let _ = std::fs::remove_dir_all(pod.state_dir());
    }
}
