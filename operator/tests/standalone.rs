//! `portcullis check` and `portcullis standalone`, run as the built binary against YAML in
//! temporary directories, a real `portcullis-proxy` and test backends on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{PORTCULLIS, proxy_bin};

use portcullis_testkit::free_port;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-standalone-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A keep-alive HTTP/1.1 backend answering every request with `x-backend: NAME`.
struct Backend {
    port: u16,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream, name));
            }
        });
        Backend { port }
    }
}

fn serve(stream: TcpStream, name: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut content_length = 0;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((n, v)) = header.split_once(':')
                && n.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
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

/// A response: status and the value of `x-backend` (empty when absent).
#[derive(Debug)]
struct Response {
    status: u16,
    backend: String,
}

/// Sends one GET on `stream` and reads the response (content-length framed).
fn request(stream: &mut BufReader<TcpStream>, host: &str, path: &str) -> std::io::Result<Response> {
    write!(
        stream.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
    )?;
    let mut status_line = String::new();
    if stream.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::other("connection closed"));
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let (mut length, mut backend) = (0usize, String::new());
    loop {
        let mut header = String::new();
        if stream.read_line(&mut header)? == 0 {
            return Err(std::io::Error::other("connection closed in the head"));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((n, v)) = header.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            } else if n.eq_ignore_ascii_case("x-backend") {
                backend = v.trim().to_string();
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok(Response { status, backend })
}

fn connect(port: u16) -> std::io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(BufReader::new(stream))
}

/// One request on a new connection.
fn get(port: u16, host: &str, path: &str) -> std::io::Result<Response> {
    request(&mut connect(port)?, host, path)
}

/// The objects of one test: a Gateway with an HTTP listener on `port`, the route
/// `app/web` (hostname web.example.com) to Services `a` and `b` with the given weights, and
/// those Services' EndpointSlices pointing at the backends.
fn objects(gateway_port: u16, a: &Backend, b: &Backend) -> String {
    format!(
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
  - {{name: http, port: {gateway_port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: a, namespace: app}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: a-1, namespace: app, labels: {{kubernetes.io/service-name: a}}}}
addressType: IPv4
ports: [{{name: http, port: {a}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: b, namespace: app}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: b-1, namespace: app, labels: {{kubernetes.io/service-name: b}}}}
addressType: IPv4
ports: [{{name: http, port: {b}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"#,
        a = a.port,
        b = b.port
    )
}

fn route(weight_a: u32, weight_b: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: app}}
spec:
  parentRefs: [{{name: gw, namespace: infra}}]
  hostnames: [web.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs:
    - {{name: a, port: 80, weight: {weight_a}}}
    - {{name: b, port: 80, weight: {weight_b}}}
"#
    )
}

fn run_check(args: &[&Path], extra: &[&str]) -> Output {
    let mut command = Command::new(PORTCULLIS);
    command.arg("check");
    for path in args {
        command.arg("-f").arg(path);
    }
    command.args(extra).output().expect("run portcullis check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_passes_a_valid_set() {
    let dir = TempDir::new();
    let (a, b) = (Backend { port: 1 }, Backend { port: 2 });
    dir.write("objects.yaml", &objects(8080, &a, &b));
    dir.write("route.yml", &route(95, 5));
    dir.write(
        "other.yaml",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: settings}\n",
    );

    let output = run_check(&[&dir.0], &[]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("KIND"), "{stdout}");
    assert!(stdout.contains("infra/gw"), "{stdout}");
    assert!(stdout.contains("app/web"), "{stdout}");
    assert!(stdout.contains("routes=1"), "{stdout}");
    assert!(stdout.contains("no problems"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        stderr.contains("PersistentVolumeClaim settings"),
        "{stderr}"
    );

    let output = run_check(&[&dir.0], &["-o", "yaml"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let parsed: serde_json::Value = serde_saphyr::from_str(&stdout).unwrap();
    assert_eq!(
        parsed.pointer("/gateways/infra~1gw/listeners/0/attachedRoutes"),
        Some(&serde_json::json!(1)),
        "{stdout}"
    );
}

#[test]
fn check_fails_on_a_missing_backend_and_on_bad_yaml() {
    let dir = TempDir::new();
    let (a, b) = (Backend { port: 1 }, Backend { port: 2 });
    let objects = dir.write("objects.yaml", &objects(8080, &a, &b));
    let route = dir.write(
        "route.yaml",
        &route(95, 5).replace("name: b, port: 80", "name: missing, port: 80"),
    );

    let output = run_check(&[&objects, &route], &[]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(
        stdout.contains("ResolvedRefs=False(BackendNotFound)"),
        "{stdout}"
    );
    assert!(stdout.contains("1 object with a problem"), "{stdout}");

    let output = run_check(&[&objects, &route], &["-o", "yaml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("BackendNotFound"));

    let broken = dir.write("broken.yaml", "kind: [unclosed\n");
    let output = run_check(&[&objects, &broken], &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken.yaml"), "{stderr}");
}

/// `portcullis standalone` as a child process, its stdout and stderr collected.
struct Standalone {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Standalone {
    fn start(paths: &[&Path], admin_port: u16, extra: &[&str]) -> Standalone {
        let mut command = Command::new(PORTCULLIS);
        command.arg("standalone");
        for path in paths {
            command.arg("-f").arg(path);
        }
        command
            .arg("--admin-address")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--proxy-bin")
            .arg(proxy_bin())
            .args(["--cores", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start portcullis standalone");
        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn Read + Send>,
            Box::new(stderr) as Box<dyn Read + Send>,
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut output = output.lock().unwrap();
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        Standalone { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`.
    fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no {needle:?} within {timeout:?}; output:\n{}",
            self.output()
        );
    }

    fn terminate(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "standalone did not exit within {timeout:?}; output:\n{}",
            self.output()
        );
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM so that the proxy child is stopped too, then make sure.
            self.terminate();
            if self.wait_quietly(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

impl Standalone {
    fn wait_quietly(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Sends requests in a loop (keep-alive, a new connection every 20 requests) until stopped;
/// counts the answers per backend and every failure.
struct Client {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(port: u16) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = connect(port).and_then(|mut connection| {
                        for _ in 0..20 {
                            let response = request(&mut connection, "web.example.com", "/")?;
                            if response.status != 200 {
                                return Err(std::io::Error::other(format!("{response:?}")));
                            }
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    });
                    if let Err(error) = result {
                        failures.lock().unwrap().push(error.to_string());
                    }
                }
            })
        };
        Client {
            stop,
            ok,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (successful requests, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

/// Asks until `backend` answers, for at most `timeout`.
fn wait_for_backend(port: u16, backend: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(response) = get(port, "web.example.com", "/")
            && response.backend == backend
        {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("backend {backend} not reached within {timeout:?}");
}

#[test]
fn standalone_serves_follows_edits_and_drains_on_sigterm() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (gateway_port, admin_port) = (free_port(), free_port());
    let dir = TempDir::new();
    dir.write("objects.yaml", &objects(gateway_port, &a, &b));
    let route_file = dir.write("route.yaml", &route(1, 0));
    let mut standalone = Standalone::start(&[&dir.0], admin_port, &[]);
    standalone.wait_for("pushed generation 1: ACK", Duration::from_secs(20));
    let output = standalone.output();
    assert!(output.contains("app/web"), "{output}");
    assert!(
        output.contains("Accepted=True ResolvedRefs=True"),
        "{output}"
    );

    let response = get(gateway_port, "web.example.com", "/").unwrap();
    assert_eq!((response.status, response.backend.as_str()), (200, "a"));
    assert_eq!(
        get(gateway_port, "other.example.com", "/").unwrap().status,
        404
    );

    // An edit moves all traffic to b while a client keeps sending.
    let client = Client::start(gateway_port);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&route_file, route(0, 1)).unwrap();
    let took = wait_for_backend(gateway_port, "b", Duration::from_secs(5));
    standalone.wait_for("pushed generation 2: ACK", Duration::from_secs(2));
    eprintln!("edit served after {took:?}");

    // A broken edit keeps the last good config serving.
    std::fs::write(&route_file, "kind: [this is not YAML\n").unwrap();
    standalone.wait_for("still serving generation 2", Duration::from_secs(5));
    let output = standalone.output();
    assert!(output.contains("route.yaml"), "{output}");
    std::thread::sleep(Duration::from_millis(300));
    let response = get(gateway_port, "web.example.com", "/").unwrap();
    assert_eq!((response.status, response.backend.as_str()), (200, "b"));

    let (ok, failures) = client.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 50, "only {ok} requests made it");

    // Repairing the file with the content being served pushes nothing.
    std::fs::write(&route_file, route(0, 1)).unwrap();
    standalone.wait_for("compiled config unchanged", Duration::from_secs(5));

    standalone.terminate();
    let status = standalone.wait(Duration::from_secs(20));
    assert!(
        status.success(),
        "{status}; output:\n{}",
        standalone.output()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", gateway_port)).is_err(),
        "the proxy is still listening"
    );
}

#[test]
fn standalone_refuses_ambiguous_or_missing_gateways() {
    let (a, b) = (Backend { port: 1 }, Backend { port: 2 });
    let dir = TempDir::new();
    let objects = objects(free_port(), &a, &b);
    let second = objects
        .split("---")
        .nth(1)
        .unwrap()
        .replace("name: gw,", "name: gw2,");
    dir.write("objects.yaml", &format!("{objects}---{second}"));
    let mut standalone = Standalone::start(&[&dir.0], free_port(), &[]);
    let status = standalone.wait(Duration::from_secs(10));
    let output = standalone.output();
    assert!(!status.success(), "{output}");
    assert!(output.contains("infra/gw, infra/gw2"), "{output}");
    assert!(output.contains("--gateway"), "{output}");

    let mut standalone = Standalone::start(&[&dir.0], free_port(), &["--gateway", "infra/nope"]);
    assert!(!standalone.wait(Duration::from_secs(10)).success());

    let empty = TempDir::new();
    empty.write(
        "class.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: portcullis}\nspec: {controllerName: portcullis.dev/gateway-controller}\n",
    );
    let mut standalone = Standalone::start(&[&empty.0], free_port(), &[]);
    assert!(!standalone.wait(Duration::from_secs(10)).success());
    assert!(standalone.output().contains("no Gateway"));
}

#[test]
fn standalone_fails_when_the_proxy_dies() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = TempDir::new();
    dir.write("objects.yaml", &objects(free_port(), &a, &b));
    dir.write("route.yaml", &route(1, 0));
    let mut standalone = Standalone::start(&[&dir.0], free_port(), &[]);
    standalone.wait_for("pushed generation 1: ACK", Duration::from_secs(20));
    let pid = standalone.child.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let proxy: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(proxy).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let status = standalone.wait(Duration::from_secs(10));
    let output = standalone.output();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("portcullis-proxy exited unexpectedly"),
        "{output}"
    );
}
