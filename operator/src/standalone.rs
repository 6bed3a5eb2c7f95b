//! `portcullis standalone`: one Gateway served from files, no cluster.
//!
//! Reads the same objects a cluster would hold from YAML files, compiles them, starts
//! `portcullis-proxy` as a child process, pushes the Gateway's config over the proxy's control
//! socket and prints every object's status. Then it polls the files; each settled edit is
//! recompiled and pushed (a config identical to the one served is not pushed again). A file
//! that does not parse, or a Gateway that stops being valid, leaves the last good config
//! serving. SIGINT/SIGTERM are forwarded to the proxy as SIGTERM; it drains, and we exit 0.

pub mod watch;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use portcullis_api::CompiledConfig;
use portcullis_api::frame::Reply;

use crate::compile::{ObjectKey, Output, compile};
use crate::distribute::control_client;
use crate::objects::load_paths;
use crate::status_table;
use watch::{Debouncer, fingerprint};

/// How often the files are looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long the files must stay unchanged before they are read again.
const QUIET_PERIOD: Duration = Duration::from_millis(300);
/// How often the loop checks for signals and for the proxy's exit.
const TICK: Duration = Duration::from_millis(50);
/// How long the proxy may take to open its control socket.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one push may take (the proxy answers after every core switched).
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The command line of `portcullis standalone`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Files or directories of YAML objects.
    pub paths: Vec<PathBuf>,
    /// The Gateway to serve; needed when the files hold several of our Gateways.
    pub gateway: Option<ObjectKey>,
    /// Where the listener ports bind.
    pub bind_address: IpAddr,
    /// The proxy's admin endpoint.
    pub admin_address: SocketAddr,
    /// The proxy binary; default: `portcullis-proxy` next to this executable.
    pub proxy_bin: Option<PathBuf>,
    /// The proxy's worker cores.
    pub cores: Option<usize>,
    /// Ask the proxy for a JSON access log on stdout.
    pub access_log: bool,
}

/// Parses `namespace/name` (a bare name means the `default` namespace, as with kubectl).
pub fn parse_gateway_key(text: &str) -> Result<ObjectKey, String> {
    let (namespace, name) = text.split_once('/').unwrap_or(("default", text));
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(format!("{text:?} is not namespace/name"));
    }
    Ok(ObjectKey::new(namespace, name))
}

/// The Gateway to serve: `wanted` if given (it must be one of ours), else the only one.
pub fn select_gateway(output: &Output, wanted: Option<&ObjectKey>) -> Result<ObjectKey> {
    let ours = || {
        output
            .gateways
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(key) if output.gateways.contains_key(key) => Ok(key.clone()),
        Some(key) => bail!(
            "Gateway {key} is not among the Gateways of a Portcullis GatewayClass in the files (found: {})",
            if output.gateways.is_empty() {
                "none".to_string()
            } else {
                ours()
            }
        ),
        None => match output.gateways.len() {
            0 => bail!(
                "the files hold no Gateway of a GatewayClass with controllerName {}",
                crate::compile::CONTROLLER_NAME
            ),
            1 => output
                .gateways
                .keys()
                .next()
                .cloned()
                .ok_or_else(|| anyhow!("no Gateway")),
            _ => bail!(
                "the files hold several Portcullis Gateways ({}); choose one with --gateway namespace/name",
                ours()
            ),
        },
    }
}

/// The config compiled for `gateway`, or why there is none.
pub fn config_for<'a>(output: &'a Output, gateway: &ObjectKey) -> Result<&'a CompiledConfig> {
    let Some(compiled) = output.gateways.get(gateway) else {
        bail!("Gateway {gateway} is no longer in the files (or no longer of our class)");
    };
    compiled
        .config
        .as_ref()
        .ok_or_else(|| anyhow!("Gateway {gateway} is not accepted, so it has no config"))
}

/// Where the proxy binary is: `explicit`, or `portcullis-proxy` next to this executable.
pub fn proxy_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--proxy-bin {}: no such file", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("finding this executable's path")?;
    let candidate = exe
        .parent()
        .map(|dir| dir.join("portcullis-proxy"))
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    if !candidate.is_file() {
        bail!(
            "portcullis-proxy not found at {}; build it (cargo build -p portcullis-dataplane) or pass --proxy-bin",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// The proxy's command-line arguments.
pub fn proxy_args(options: &Options, socket: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--control-socket".into(),
        socket.into(),
        "--admin-address".into(),
        options.admin_address.to_string().into(),
        "--bind-address".into(),
        options.bind_address.to_string().into(),
    ];
    if let Some(cores) = options.cores {
        args.push("--cores".into());
        args.push(cores.to_string().into());
    }
    if options.access_log {
        args.push("--access-log".into());
    }
    args
}

/// What a push came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The config is the one already served; nothing was sent.
    Unchanged {
        generation: u64,
    },
    Ack {
        generation: u64,
    },
    Nack {
        generation: u64,
        reason: String,
    },
}

/// Numbers pushes (1, 2, 3, …: one generation per push, whatever its outcome) and skips
/// configs identical to the one being served.
#[derive(Debug)]
pub struct Pusher {
    next_generation: u64,
    /// Generation and content hash of the config the proxy acknowledged last.
    served: Option<(u64, [u8; 32])>,
}

impl Default for Pusher {
    fn default() -> Self {
        Self {
            next_generation: 1,
            served: None,
        }
    }
}

impl Pusher {
    /// The generation being served, if any config was acknowledged.
    pub fn served_generation(&self) -> Option<u64> {
        self.served.map(|(generation, _)| generation)
    }

    /// Pushes `config` with the next generation through `send`, unless it is what is served.
    pub fn push(
        &mut self,
        config: &CompiledConfig,
        send: impl FnOnce(&CompiledConfig) -> Result<Reply>,
    ) -> Result<Pushed> {
        let hash = config.content_hash();
        if let Some((generation, served)) = self.served
            && served == hash
        {
            return Ok(Pushed::Unchanged { generation });
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let mut numbered = config.clone();
        numbered.generation = generation;
        match send(&numbered)? {
            Reply::Ack { generation: acked } => {
                self.served = Some((acked, hash));
                Ok(Pushed::Ack { generation: acked })
            }
            Reply::Nack { reason } => Ok(Pushed::Nack { generation, reason }),
        }
    }

    /// "generation N" or "nothing" for messages.
    fn serving(&self) -> String {
        match self.served_generation() {
            Some(generation) => format!("generation {generation}"),
            None => "nothing".to_string(),
        }
    }
}

/// A private directory for the control socket, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-standalone-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The proxy child process; killed on drop if still running (normal exits wait for it).
struct ProxyProcess {
    child: Child,
}

impl ProxyProcess {
    fn spawn(binary: &Path, args: &[OsString]) -> Result<Self> {
        let child = Command::new(binary)
            .args(args)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { child })
    }

    /// The exit status if the proxy has exited.
    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .context("checking on portcullis-proxy")
    }

    /// Sends SIGTERM (the proxy drains, then exits) and waits for the exit.
    fn terminate_and_wait(&mut self) -> Result<ExitStatus> {
        if self.exited()?.is_none() {
            let pid = i32::try_from(self.child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .ok_or_else(|| anyhow!("portcullis-proxy has no valid process id"))?;
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .context("sending SIGTERM to portcullis-proxy")?;
        }
        self.child.wait().context("waiting for portcullis-proxy")
    }

    /// Waits until the control socket accepts connections.
    fn wait_for_socket(&mut self, socket: &Path, stop: &AtomicBool) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if UnixStream::connect(socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exited()? {
                bail!("portcullis-proxy exited at start ({status})");
            }
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted while portcullis-proxy was starting");
            }
            if Instant::now() >= deadline {
                bail!(
                    "portcullis-proxy did not open its control socket {} within {STARTUP_TIMEOUT:?}",
                    socket.display()
                );
            }
            std::thread::sleep(TICK);
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The files compiled once: the statuses and the notes about what was skipped.
struct Compiled {
    output: Output,
    notes: Vec<String>,
}

fn load_and_compile(paths: &[PathBuf]) -> Result<Compiled> {
    let loaded = load_paths(paths)?;
    let output = compile(&loaded.input);
    let notes = status_table::notes(&loaded, &output);
    Ok(Compiled { output, notes })
}

fn print_notes(notes: &[String]) {
    for note in notes {
        eprintln!("note: {note}");
    }
}

/// The running session: what is compiled and what the proxy serves.
struct Session {
    paths: Vec<PathBuf>,
    gateway: ObjectKey,
    socket: PathBuf,
    pusher: Pusher,
    compiled: Compiled,
}

impl Session {
    fn push(&mut self, config: &CompiledConfig) -> Result<Pushed> {
        let socket = self.socket.clone();
        self.pusher
            .push(config, |c| control_client::push(&socket, c, PUSH_TIMEOUT))
    }

    /// Pushes the first config; anything but an ACK ends the session.
    fn start(&mut self) -> Result<()> {
        let config = config_for(&self.compiled.output, &self.gateway)?.clone();
        match self.push(&config)? {
            Pushed::Ack { generation } | Pushed::Unchanged { generation } => {
                println!("pushed generation {generation}: ACK");
                Ok(())
            }
            Pushed::Nack { generation, reason } => {
                bail!("the proxy refused generation {generation}: NACK {reason}")
            }
        }
    }

    /// Reads the files again and pushes what changed; every failure leaves the served config
    /// as it is and is only reported.
    fn reload(&mut self) {
        println!("files changed; recompiling");
        let compiled = match load_and_compile(&self.paths) {
            Ok(compiled) => compiled,
            Err(error) => {
                eprintln!("error: {error:#}");
                println!("still serving {}", self.pusher.serving());
                return;
            }
        };
        if compiled.notes != self.compiled.notes {
            print_notes(&compiled.notes);
        }
        print!(
            "{}",
            status_table::render_changes(&self.compiled.output, &compiled.output)
        );
        self.compiled = compiled;
        let config = match config_for(&self.compiled.output, &self.gateway) {
            Ok(config) => config.clone(),
            Err(error) => {
                println!("{error:#}; still serving {}", self.pusher.serving());
                return;
            }
        };
        match self.push(&config) {
            Ok(Pushed::Unchanged { generation }) => {
                println!("compiled config unchanged; still serving generation {generation}");
            }
            Ok(Pushed::Ack { generation }) => println!("pushed generation {generation}: ACK"),
            Ok(Pushed::Nack { generation, reason }) => println!(
                "pushed generation {generation}: NACK {reason}; still serving {}",
                self.pusher.serving()
            ),
            Err(error) => println!(
                "push failed: {error:#}; still serving {}",
                self.pusher.serving()
            ),
        }
    }
}

/// Registers SIGINT and SIGTERM; the flag turns true when one arrives.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .with_context(|| format!("installing a handler for signal {signal}"))?;
    }
    Ok(stop)
}

/// Runs standalone mode until a signal (exit 0 once the proxy drained) or until the proxy
/// exits on its own (exit 1).
pub fn run(options: &Options) -> Result<ExitCode> {
    let stop = stop_flag()?;
    // Taken before the first read, so an edit made while starting is not missed.
    let mut debouncer = Debouncer::new(fingerprint(&options.paths), QUIET_PERIOD);
    let compiled = load_and_compile(&options.paths)?;
    print_notes(&compiled.notes);
    print!("{}", status_table::render(&compiled.output));
    let gateway = select_gateway(&compiled.output, options.gateway.as_ref())?;
    config_for(&compiled.output, &gateway)?;

    let workdir = WorkDir::create()?;
    let socket = workdir.0.join("control.sock");
    let binary = proxy_binary(options.proxy_bin.as_deref())?;
    println!(
        "serving Gateway {gateway} with {} (admin http://{})",
        binary.display(),
        options.admin_address
    );
    let mut proxy = ProxyProcess::spawn(&binary, &proxy_args(options, &socket))?;
    proxy.wait_for_socket(&socket, &stop)?;
    let mut session = Session {
        paths: options.paths.clone(),
        gateway,
        socket,
        pusher: Pusher::default(),
        compiled,
    };
    session.start()?;
    println!("watching {} for changes", display_paths(&options.paths));

    let mut last_poll = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return shut_down(&mut proxy);
        }
        if let Some(status) = proxy.exited()? {
            eprintln!("portcullis-proxy exited unexpectedly ({status})");
            return Ok(ExitCode::FAILURE);
        }
        let now = Instant::now();
        if now.duration_since(last_poll) >= POLL_INTERVAL {
            last_poll = now;
            if debouncer.observe(fingerprint(&options.paths), now) {
                session.reload();
            }
        }
        std::thread::sleep(TICK);
    }
}

fn shut_down(proxy: &mut ProxyProcess) -> Result<ExitCode> {
    println!("stopping: portcullis-proxy drains its connections");
    let status = proxy.terminate_and_wait()?;
    if status.success() {
        println!("portcullis-proxy stopped");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("portcullis-proxy stopped with {status}");
        Ok(ExitCode::FAILURE)
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Loaded, load_str};

    fn output(gateways: &[(&str, &str)]) -> Output {
        let mut text = String::from(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: portcullis}\nspec: {controllerName: portcullis.dev/gateway-controller}\n",
        );
        for (namespace, name) in gateways {
            text.push_str(&format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  gatewayClassName: portcullis\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"
            ));
        }
        let mut loaded = Loaded::default();
        load_str(&text, "test.yaml", &mut loaded).unwrap();
        compile(&loaded.input)
    }

    #[test]
    fn gateway_keys() {
        assert_eq!(parse_gateway_key("a/b"), Ok(ObjectKey::new("a", "b")));
        assert_eq!(parse_gateway_key("b"), Ok(ObjectKey::new("default", "b")));
        assert!(parse_gateway_key("a/b/c").is_err());
        assert!(parse_gateway_key("/b").is_err());
        assert!(parse_gateway_key("a/").is_err());
    }

    #[test]
    fn gateway_selection() {
        let none = output(&[]);
        let message = format!("{:#}", select_gateway(&none, None).unwrap_err());
        assert!(message.contains("no Gateway"), "{message}");

        let one = output(&[("demo", "gw")]);
        assert_eq!(
            select_gateway(&one, None).unwrap(),
            ObjectKey::new("demo", "gw")
        );
        assert!(select_gateway(&one, Some(&ObjectKey::new("demo", "other"))).is_err());
        assert!(config_for(&one, &ObjectKey::new("demo", "gw")).is_ok());
        assert!(config_for(&one, &ObjectKey::new("demo", "other")).is_err());

        let two = output(&[("demo", "a"), ("demo", "b")]);
        let message = format!("{:#}", select_gateway(&two, None).unwrap_err());
        assert!(message.contains("demo/a, demo/b"), "{message}");
        assert!(message.contains("--gateway"), "{message}");
        assert_eq!(
            select_gateway(&two, Some(&ObjectKey::new("demo", "b"))).unwrap(),
            ObjectKey::new("demo", "b")
        );
    }

    #[test]
    fn pusher_numbers_pushes_and_skips_identical_configs() {
        let mut pusher = Pusher::default();
        let ack = |c: &CompiledConfig| {
            Ok(Reply::Ack {
                generation: c.generation,
            })
        };
        let first = CompiledConfig::empty(0);
        assert_eq!(
            pusher.push(&first, ack).unwrap(),
            Pushed::Ack { generation: 1 }
        );
        assert_eq!(
            pusher.push(&first, |_| panic!("must not send")).unwrap(),
            Pushed::Unchanged { generation: 1 }
        );

        let mut second = CompiledConfig::empty(0);
        second.gateway.name = "changed".into();
        let nack = |c: &CompiledConfig| {
            assert_eq!(c.generation, 2);
            Ok(Reply::Nack {
                reason: "no".into(),
            })
        };
        assert_eq!(
            pusher.push(&second, nack).unwrap(),
            Pushed::Nack {
                generation: 2,
                reason: "no".into()
            }
        );
        assert_eq!(pusher.served_generation(), Some(1));
        assert!(
            pusher
                .push(&second, |_| Err(anyhow!("socket gone")))
                .is_err()
        );
        assert_eq!(
            pusher.push(&second, ack).unwrap(),
            Pushed::Ack { generation: 4 }
        );
        assert_eq!(pusher.served_generation(), Some(4));
        assert_eq!(
            pusher.push(&first, ack).unwrap(),
            Pushed::Ack { generation: 5 },
            "going back to older content is a new push"
        );
    }

    #[test]
    fn proxy_arguments() {
        let mut options = Options {
            paths: vec![],
            gateway: None,
            bind_address: "127.0.0.1".parse().unwrap(),
            admin_address: "127.0.0.1:19000".parse().unwrap(),
            proxy_bin: None,
            cores: None,
            access_log: false,
        };
        let args = |o: &Options| -> Vec<String> {
            proxy_args(o, Path::new("/tmp/x/control.sock"))
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            args(&options),
            [
                "--control-socket",
                "/tmp/x/control.sock",
                "--admin-address",
                "127.0.0.1:19000",
                "--bind-address",
                "127.0.0.1"
            ]
        );
        options.cores = Some(2);
        options.access_log = true;
        assert_eq!(args(&options)[6..], ["--cores", "2", "--access-log"]);
    }

    #[test]
    fn missing_proxy_binary_is_explained() {
        let message = format!(
            "{:#}",
            proxy_binary(Some(Path::new("/nonexistent/portcullis-proxy"))).unwrap_err()
        );
        assert!(message.contains("--proxy-bin"), "{message}");
    }
}
