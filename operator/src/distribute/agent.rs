//! `portcullis agent`: the sidecar in each proxy pod that relays configs from the operator's
//! config stream to `portcullis-proxy`'s control socket.
//!
//! - On start it hands the proxy the last good config persisted in `<state-dir>` (an emptyDir),
//!   so a restarted proxy serves while the operator is unreachable. It does the same whenever
//!   the proxy's control socket is re-created (the proxy container restarted). A new pod has an
//!   empty `<state-dir>`; it starts from `--bootstrap-file`, the Gateway's last-good Secret that
//!   the operator keeps at the newest config a pod served.
//! - It connects to the operator over TLS (trusting `--ca-file`), authenticating with the
//!   projected ServiceAccount token, re-read on every connect because the kubelet rotates it;
//!   the Hello says which config the proxy serves, so unchanged content is never resent.
//! - Each Update goes to the proxy; an ACKed one is persisted atomically (temp file + rename)
//!   as the new last good; either way a Report tells the operator what happened. A NACKed
//!   config changes nothing: the proxy keeps serving the previous one.
//! - Lost connections are retried forever with capped exponential backoff and jitter.
//!
//! Before pushing a generation it records it in `<state-dir>/pushed-generation`, so that after
//! an agent restart the generations it asks for stay above anything the proxy may already
//! serve (the proxy refuses to go backwards).

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use portcullis_api::config::SCHEMA_VERSION;
use portcullis_api::frame::{self, Reply};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::control_client;
use super::gzip;
use super::hub::PodId;
use super::proto::agent_message::Message;
use super::proto::config_stream_client::ConfigStreamClient;
use super::proto::{AgentMessage, Hello, Report, Update};
use super::server::MAX_UPDATE_BYTES;
use crate::compile::ObjectKey;

/// The persisted last good config (the CompiledConfig JSON, as pushed).
pub const LAST_GOOD_FILE: &str = "last-good.json";
/// The highest generation ever pushed to the proxy.
pub const PUSHED_GENERATION_FILE: &str = "pushed-generation";

/// The command line of `portcullis agent`.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// e.g. `https://portcullis.portcullis-system.svc:9443`
    pub config_server: String,
    /// The name the config server's certificate must carry, when the URL holds an address
    /// (the operator hands agents its Service's ClusterIP so delivery never waits on DNS).
    pub config_server_name: Option<String>,
    pub gateway: ObjectKey,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
    /// A config to start from when `state_dir` holds none (a new pod): the Gateway's last-good
    /// Secret, mounted by the Deployment. Missing is fine.
    pub bootstrap_file: Option<PathBuf>,
    /// This pod (downward API).
    pub pod: PodId,
    /// How long the proxy may take to answer one push.
    pub push_timeout: Duration,
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval and how long to wait for the answer before giving up the stream.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Reconnect delays: doubling from `min` to `max`, jittered.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl AgentOptions {
    /// Options with the default timeouts.
    pub fn new(
        config_server: String,
        gateway: ObjectKey,
        token_file: PathBuf,
        ca_file: PathBuf,
        control_socket: PathBuf,
        state_dir: PathBuf,
        pod: PodId,
    ) -> Self {
        Self {
            config_server,
            config_server_name: None,
            gateway,
            token_file,
            ca_file,
            control_socket,
            state_dir,
            bootstrap_file: None,
            pod,
            push_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// How often the control socket is looked at for a restarted proxy.
const PROXY_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How often a push waits for the control socket to appear.
const SOCKET_POLL: Duration = Duration::from_millis(200);
/// A stream that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);

/// Capped exponential backoff with jitter (each delay drawn from [d/2, d]).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            min,
            max: max.max(min),
            next: min,
            rng: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let fraction = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.5 + fraction / 2.0)
    }
}

/// A config the proxy ACKed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastGood {
    pub json: Arc<Vec<u8>>,
    pub generation: u64,
    pub hash: [u8; 32],
}

impl LastGood {
    /// Checks that `json` is a config (the agent never hands the proxy garbage from disk).
    pub fn parse(json: Vec<u8>) -> Result<Self> {
        let config = frame::decode_json(&json).context("decoding the config")?;
        Ok(Self {
            generation: config.generation,
            hash: config.content_hash(),
            json: Arc::new(json),
        })
    }
}

/// Reads `<state-dir>/last-good.json`; a missing file is None, a corrupt one is an error.
pub fn load_last_good(state_dir: &Path) -> Result<Option<LastGood>> {
    let path = state_dir.join(LAST_GOOD_FILE);
    match std::fs::read(&path) {
        Ok(json) => LastGood::parse(json)
            .map(Some)
            .with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The largest config a bootstrap file may decompress to.
const BOOTSTRAP_MAX_BYTES: u64 = 64 << 20;

/// The bootstrap config, if there is a usable one (it is optional, so any failure only warns).
/// The last-good Secret holds it gzipped; plain JSON is accepted too.
fn load_bootstrap(path: &Path) -> Option<LastGood> {
    let read = std::fs::read(path).and_then(|bytes| {
        if gzip::is_gzip(&bytes) {
            gzip::decompress(&bytes, BOOTSTRAP_MAX_BYTES)
        } else {
            Ok(bytes)
        }
    });
    match read {
        Ok(json) => match LastGood::parse(json) {
            Ok(last_good) => {
                tracing::info!(file = %path.display(), generation = last_good.generation,
                    "starting from the Gateway's last-good config");
                Some(last_good)
            }
            Err(error) => {
                tracing::warn!(file = %path.display(), error = %format!("{error:#}"),
                    "ignoring the bootstrap config");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "ignoring the bootstrap config");
            None
        }
    }
}

fn load_pushed_generation(state_dir: &Path) -> u64 {
    std::fs::read_to_string(state_dir.join(PUSHED_GENERATION_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` so that a reader sees the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let mut temp_name = name.to_os_string();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let mut file =
        std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))
}

/// Identifies one incarnation of the control socket: a restarted proxy binds a new one.
type SocketId = (u64, u64, i64, i64);

fn socket_id(path: &Path) -> Option<SocketId> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// True when the push failed because no proxy listens yet (socket missing or refusing).
fn proxy_not_listening(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            )
        })
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(options: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut agent = Agent::new(options)?;
    tokio::select! {
        () = agent.run_forever() => Ok(()),
        () = shutdown => {
            tracing::info!("agent stopping");
            Ok(())
        }
    }
}

struct Agent {
    options: AgentOptions,
    last_good: Option<LastGood>,
    /// The highest generation pushed (persisted).
    pushed_generation: u64,
    /// The control socket the last good config was delivered to.
    delivered: Option<SocketId>,
}

impl Agent {
    fn new(options: AgentOptions) -> Result<Self> {
        std::fs::create_dir_all(&options.state_dir)
            .with_context(|| format!("creating {}", options.state_dir.display()))?;
        let mut last_good = match load_last_good(&options.state_dir) {
            Ok(last_good) => last_good,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "ignoring the persisted config");
                None
            }
        };
        if let Some(last_good) = &last_good {
            tracing::info!(
                generation = last_good.generation,
                "found the last good config"
            );
        } else if let Some(bootstrap) = &options.bootstrap_file {
            last_good = load_bootstrap(bootstrap);
        }
        let pushed_generation = load_pushed_generation(&options.state_dir);
        Ok(Self {
            options,
            last_good,
            pushed_generation,
            delivered: None,
        })
    }

    async fn run_forever(&mut self) {
        let mut backoff = Backoff::new(self.options.backoff_min, self.options.backoff_max);
        loop {
            self.sync_proxy().await;
            let started = Instant::now();
            let mut established = false;
            match self.session(&mut established).await {
                Ok(()) => tracing::info!("the config server ended the stream"),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "config stream failed")
                }
            }
            if established && started.elapsed() >= STABLE_SESSION {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            let until = Instant::now() + delay;
            // Keep a restarted proxy served while waiting.
            while Instant::now() < until {
                self.sync_proxy().await;
                let left = until.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(PROXY_CHECK_INTERVAL)).await;
            }
        }
    }

    fn hello(&self) -> Hello {
        let (generation, hash) = self
            .last_good
            .as_ref()
            .map(|g| (g.generation, g.hash.to_vec()))
            .unwrap_or_default();
        Hello {
            schema_version: SCHEMA_VERSION,
            gateway_namespace: self.options.gateway.namespace.clone(),
            gateway_name: self.options.gateway.name.clone(),
            pod_name: self.options.pod.name.clone(),
            pod_namespace: self.options.pod.namespace.clone(),
            pod_uid: self.options.pod.uid.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            // Above whatever the proxy may serve, even a config whose ACK we did not persist.
            last_applied_generation: generation.max(self.pushed_generation),
            last_applied_hash: hash,
        }
    }

    async fn session(&mut self, established: &mut bool) -> Result<()> {
        let token = std::fs::read_to_string(&self.options.token_file)
            .with_context(|| format!("reading {}", self.options.token_file.display()))?;
        let token = token.trim();
        if token.is_empty() {
            bail!("{} is empty", self.options.token_file.display());
        }
        let ca = std::fs::read(&self.options.ca_file)
            .with_context(|| format!("reading {}", self.options.ca_file.display()))?;
        let endpoint = Endpoint::from_shared(self.options.config_server.clone())
            .with_context(|| format!("--config-server {}", self.options.config_server))?
            .tls_config({
                let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                match &self.options.config_server_name {
                    Some(name) => tls.domain_name(name.clone()),
                    None => tls,
                }
            })
            .context("the TLS settings")?
            .connect_timeout(self.options.connect_timeout)
            .http2_keep_alive_interval(self.options.keepalive_interval)
            .keep_alive_timeout(self.options.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(Duration::from_secs(30)));
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.options.config_server))?;
        let mut client =
            ConfigStreamClient::new(channel).max_decoding_message_size(MAX_UPDATE_BYTES);

        let (outbound, receiver) = mpsc::channel(4);
        let hello = self.hello();
        outbound
            .send(AgentMessage {
                message: Some(Message::Hello(hello.clone())),
            })
            .await
            .map_err(|_| anyhow!("the request stream closed"))?;
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .context("the token is not valid metadata")?,
        );
        let mut inbound = client
            .stream(request)
            .await
            .map_err(|status| {
                anyhow!(
                    "the config server refused the stream: {:?}: {}",
                    status.code(),
                    status.message()
                )
            })?
            .into_inner();
        *established = true;
        tracing::info!(
            server = %self.options.config_server,
            generation = hello.last_applied_generation,
            "config stream open"
        );
        let mut check = tokio::time::interval(PROXY_CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let Some(update) = message.map_err(|status| {
                        anyhow!("the stream broke: {:?}: {}", status.code(), status.message())
                    })? else {
                        return Ok(());
                    };
                    let report = self.apply(update).await?;
                    outbound
                        .send(AgentMessage { message: Some(Message::Report(report)) })
                        .await
                        .map_err(|_| anyhow!("the request stream closed"))?;
                }
                _ = check.tick() => {
                    if let Some(report) = self.sync_proxy().await {
                        outbound
                            .send(AgentMessage { message: Some(Message::Report(report)) })
                            .await
                            .map_err(|_| anyhow!("the request stream closed"))?;
                    }
                }
            }
        }
    }

    /// Hands the proxy one Update; the Report for it. An error means the proxy could not be
    /// reached properly: the stream is dropped so the config is offered again on reconnect.
    async fn apply(&mut self, mut update: Update) -> Result<Report> {
        let json = std::mem::take(&mut update.config_json);
        let report = |ok: bool, error: String| Report {
            generation: update.generation,
            content_hash: update.content_hash.clone(),
            ok,
            error,
        };
        let last_good = match LastGood::parse(json) {
            Ok(parsed) => parsed,
            Err(error) => {
                return Ok(report(
                    false,
                    format!("the agent cannot read the config: {error:#}"),
                ));
            }
        };
        if last_good.generation != update.generation
            || last_good.hash.as_slice() != update.content_hash.as_slice()
        {
            return Ok(report(
                false,
                "the update's generation or hash does not match its config".into(),
            ));
        }
        if update.generation > self.pushed_generation {
            write_atomically(
                &self.options.state_dir.join(PUSHED_GENERATION_FILE),
                update.generation.to_string().as_bytes(),
            )?;
            self.pushed_generation = update.generation;
        }
        let frame = Arc::new(frame::encode_payload(&last_good.json).context("framing the config")?);
        let (reply, socket) = self.push_waiting(frame).await?;
        match reply {
            Reply::Ack { generation } => {
                tracing::info!(generation, "the proxy serves the new config");
                if let Err(error) = write_atomically(
                    &self.options.state_dir.join(LAST_GOOD_FILE),
                    &last_good.json,
                ) {
                    // The proxy serves it; only a proxy restart without the operator suffers.
                    tracing::error!(error = %format!("{error:#}"), "persisting the config failed");
                }
                self.last_good = Some(last_good);
                self.delivered = socket;
                Ok(Report {
                    generation,
                    ..report(true, String::new())
                })
            }
            Reply::Nack { reason } => {
                tracing::warn!(generation = update.generation, %reason,
                    "the proxy rejected the config; the previous one keeps serving");
                Ok(report(false, reason))
            }
        }
    }

    /// Pushes `frame`, waiting for the proxy's control socket to accept connections.
    async fn push_waiting(&self, frame: Arc<Vec<u8>>) -> Result<(Reply, Option<SocketId>)> {
        let mut waiting_since: Option<Instant> = None;
        loop {
            let socket = socket_id(&self.options.control_socket);
            if socket.is_some() {
                match self.push_once(frame.clone()).await {
                    Ok(reply) => return Ok((reply, socket)),
                    Err(error) if proxy_not_listening(&error) => {}
                    Err(error) => return Err(error),
                }
            }
            match waiting_since {
                None => {
                    tracing::info!(socket = %self.options.control_socket.display(),
                        "waiting for the proxy's control socket");
                    waiting_since = Some(Instant::now());
                }
                Some(since) if since.elapsed() > Duration::from_secs(60) => {
                    tracing::warn!(socket = %self.options.control_socket.display(),
                        "still waiting for the proxy's control socket");
                    waiting_since = Some(Instant::now());
                }
                Some(_) => {}
            }
            tokio::time::sleep(SOCKET_POLL).await;
        }
    }

    async fn push_once(&self, frame: Arc<Vec<u8>>) -> Result<Reply> {
        let socket = self.options.control_socket.clone();
        let timeout = self.options.push_timeout;
        tokio::task::spawn_blocking(move || control_client::push_frame(&socket, &frame, timeout))
            .await
            .context("the push task failed")?
    }

    /// Gives a (re)started proxy the last good config. Returns a Report when it refused it.
    async fn sync_proxy(&mut self) -> Option<Report> {
        let last_good = self.last_good.clone()?;
        let socket = socket_id(&self.options.control_socket)?;
        if self.delivered == Some(socket) {
            return None;
        }
        let frame = match frame::encode_payload(&last_good.json) {
            Ok(frame) => Arc::new(frame),
            Err(error) => {
                tracing::error!(%error, "framing the last good config failed");
                self.delivered = Some(socket);
                return None;
            }
        };
        match self.push_once(frame).await {
            Ok(Reply::Ack { generation }) => {
                tracing::info!(
                    generation,
                    "the proxy serves the persisted last good config"
                );
                self.delivered = Some(socket);
                None
            }
            Ok(Reply::Nack { reason }) => {
                tracing::warn!(generation = last_good.generation, %reason,
                    "the proxy rejected the persisted config");
                self.delivered = Some(socket);
                Some(Report {
                    generation: last_good.generation,
                    content_hash: last_good.hash.to_vec(),
                    ok: false,
                    error: format!(
                        "restoring the last good config after a proxy restart: {reason}"
                    ),
                })
            }
            // Still starting: the next check tries again.
            Err(error) if proxy_not_listening(&error) => None,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "restoring the last good config failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut bases = Vec::new();
        for _ in 0..12 {
            let delay = backoff.next_delay();
            bases.push(delay);
        }
        assert!(bases[0] >= Duration::from_millis(100) && bases[0] <= Duration::from_millis(200));
        assert!(bases[1] >= Duration::from_millis(200) && bases[1] <= Duration::from_millis(400));
        for delay in &bases[6..] {
            assert!(
                *delay >= Duration::from_secs(5) && *delay <= Duration::from_secs(10),
                "{delay:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(200));
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-agent-unit-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn last_good_round_trip_and_corruption() {
        let dir = temp_dir("last-good");
        assert_eq!(load_last_good(&dir).unwrap(), None);
        let mut config = portcullis_api::CompiledConfig::empty(5);
        config.settings.max_header_count = 40;
        let json = serde_json::to_vec(&config).unwrap();
        write_atomically(&dir.join(LAST_GOOD_FILE), &json).unwrap();
        let loaded = load_last_good(&dir).unwrap().unwrap();
        assert_eq!(loaded.generation, 5);
        assert_eq!(loaded.hash, config.content_hash());
        assert!(!dir.join("last-good.json.tmp").exists());

        std::fs::write(dir.join(LAST_GOOD_FILE), b"{not json").unwrap();
        assert!(load_last_good(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hello_stays_above_every_pushed_generation() {
        let dir = temp_dir("hello");
        let mut config = portcullis_api::CompiledConfig::empty(4);
        config.settings.max_header_count = 41;
        std::fs::write(
            dir.join(LAST_GOOD_FILE),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(PUSHED_GENERATION_FILE), "9\n").unwrap();
        let options = AgentOptions::new(
            "https://127.0.0.1:1".into(),
            ObjectKey::new("infra", "gw"),
            dir.join("token"),
            dir.join("ca.crt"),
            dir.join("control.sock"),
            dir.clone(),
            PodId {
                namespace: "infra".into(),
                name: "gw-portcullis-abc".into(),
                uid: "uid".into(),
            },
        );
        let agent = Agent::new(options).unwrap();
        let hello = agent.hello();
        assert_eq!(hello.last_applied_generation, 9);
        assert_eq!(hello.last_applied_hash, config.content_hash().to_vec());
        assert_eq!(hello.gateway_name, "gw");
        assert_eq!(hello.pod_uid, "uid");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_proxy_is_recognised() {
        let error = control_client::push_frame(
            Path::new("/nonexistent/portcullis/control.sock"),
            b"x",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(proxy_not_listening(&error), "{error:#}");
        assert!(!proxy_not_listening(&anyhow!(
            "the proxy closed the connection"
        )));
    }
}
