//! Runs the real `portcullis-proxy` binary as a child process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use portcullis_api::CompiledConfig;
use portcullis_api::frame::Reply;

use super::free_port;

pub struct Proxy {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub admin_port: u16,
}

static NEXT_DIR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Proxy {
    /// Starts a proxy on `cores` worker cores serving `config`, and waits until it is ready.
    pub fn start(config: &CompiledConfig) -> Proxy {
        Self::start_with(config, &["--cores", "2"])
    }

    pub fn start_with(config: &CompiledConfig, extra: &[&str]) -> Proxy {
        let proxy = Self::spawn(Some(config), extra);
        proxy.wait_ready(Duration::from_secs(10));
        proxy
    }

    /// Like [`Proxy::start`], with extra environment variables.
    pub fn start_with_env(config: &CompiledConfig, env: &[(&str, &str)]) -> Proxy {
        let proxy = Self::spawn_with_env(Some(config), &["--cores", "2"], env);
        proxy.wait_ready(Duration::from_secs(10));
        proxy
    }

    /// Starts a proxy without waiting (or a config: it then waits on its control socket).
    pub fn spawn(config: Option<&CompiledConfig>, extra: &[&str]) -> Proxy {
        Self::spawn_with_env(config, extra, &[])
    }

    fn spawn_with_env(
        config: Option<&CompiledConfig>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proxy {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");
        let admin_port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis-proxy"));
        command
            .arg("--control-socket")
            .arg(&socket)
            .arg("--admin-address")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--bind-address")
            .arg("127.0.0.1")
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr.log")).unwrap(),
            ));
        if let Some(config) = config {
            let path = dir.join("config.json");
            std::fs::write(&path, serde_json::to_vec(config).unwrap()).unwrap();
            command.arg("--config").arg(&path);
        }
        let child = command.spawn().expect("spawn portcullis-proxy");
        Proxy {
            child: Some(child),
            dir,
            socket,
            admin_port,
        }
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .admin_get("/ready")
                .map(|(status, _)| status == 200)
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "proxy not ready within {timeout:?}; stderr:\n{}",
            self.stderr()
        );
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Pushes a config over the control socket and returns the proxy's reply.
    pub fn push(&self, config: &CompiledConfig) -> Reply {
        portcullis_operator::distribute::control_client::push(
            &self.socket,
            config,
            Duration::from_secs(30),
        )
        .expect("push config")
    }

    pub fn push_frame(&self, frame: &[u8]) -> Reply {
        portcullis_operator::distribute::control_client::push_frame(
            &self.socket,
            frame,
            Duration::from_secs(30),
        )
        .expect("push frame")
    }

    /// GET on the admin endpoint: (status, body).
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Value of an unlabelled metric, or the sum over a metric's label sets matching `filter`.
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").expect("scrape metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
            })
            .filter(|l| l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
