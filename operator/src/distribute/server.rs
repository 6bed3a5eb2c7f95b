//! The config server: one TLS gRPC stream per proxy pod (`api/proto/.../config.proto`).
//!
//! Authentication: the agent sends its projected ServiceAccount token as
//! `authorization: Bearer <token>`; an [`Authenticator`] (in a cluster: a TokenReview with the
//! audience `portcullis.dev/config`) turns it into the ServiceAccount and the pod the token is
//! bound to. Authorization: the ServiceAccount must be the one provisioned for the Gateway the
//! agent names in its Hello, in that Gateway's namespace, and the pod in the Hello must be the
//! token's pod. Anything else ends the call with PERMISSION_DENIED before a config is sent.
//!
//! Serving: nothing is sent before the controller's caches have synced (`ConfigHub::synced`),
//! so an agent is never handed an empty config because the operator just started. Then the
//! newest published config is sent whenever it changes, at most one Update outstanding: the
//! next follows the agent's Report, so configs published meanwhile collapse into the newest.
//! Generations are `max(agent's reported generation, last sent) + 1`; content the agent reports
//! as applied (by hash) is not sent again, which makes an operator restart a no-op for proxies,
//! and content the proxy NACKed is not resent until the published content changes.
//!
//! Metrics ([`StreamMetrics`]): `connected_agents` counts the streams open past authorization
//! (a guard held by the session, so every way a stream ends takes it out), `config_pushes` the
//! Updates sent, `config_reports` the agents' Reports by result.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::Stream;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use portcullis_api::config::SCHEMA_VERSION;
use portcullis_api::frame::MAX_PAYLOAD_BYTES;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::hub::{ConfigHub, PodId, Published};
use super::proto::agent_message::Message;
use super::proto::config_stream_server::{ConfigStream, ConfigStreamServer};
use super::proto::{AgentMessage, Hello, Report, Update};
use crate::compile::ObjectKey;
use crate::provision::TOKEN_AUDIENCE;
use crate::telemetry::{ConnectedAgent, StreamMetrics};

/// Largest Update: a maximal control-socket payload plus protobuf framing.
pub const MAX_UPDATE_BYTES: usize = MAX_PAYLOAD_BYTES as usize + (1 << 20);
/// Largest message an agent may send (Hello, Report).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 64 << 10;
/// TokenReview `user.extra` keys of a pod-bound token.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The ServiceAccount's namespace (also the bound pod's namespace).
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to (projected tokens are).
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is not valid: UNAUTHENTICATED.
    #[error("{0}")]
    Rejected(String),
    /// The token could not be checked (API server unreachable): UNAVAILABLE, the agent retries.
    #[error("the token could not be checked: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into an [`Identity`].
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, token: &str)
    -> impl Future<Output = Result<Identity, AuthError>> + Send;
}

/// Checks tokens with a Kubernetes TokenReview (`authentication.k8s.io/v1`, audience
/// `portcullis.dev/config`). RBAC: `create` on `tokenreviews`.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    audience: String,
}

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            audience: TOKEN_AUDIENCE.to_string(),
        }
    }
}

impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        identity_from_review(reviewed.status.as_ref(), &self.audience)
    }
}

/// The identity a TokenReview status vouches for.
pub fn identity_from_review(
    status: Option<&TokenReviewStatus>,
    audience: &str,
) -> Result<Identity, AuthError> {
    let Some(status) = status else {
        return Err(AuthError::Unavailable(
            "the TokenReview has no status".into(),
        ));
    };
    if status.authenticated != Some(true) {
        return Err(AuthError::Rejected(format!(
            "the token is not valid{}",
            status
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )));
    }
    if let Some(audiences) = &status.audiences
        && !audiences.iter().any(|a| a == audience)
    {
        return Err(AuthError::Rejected(format!(
            "the token is not meant for {audience}"
        )));
    }
    let user = status
        .user
        .as_ref()
        .ok_or_else(|| AuthError::Rejected("the TokenReview names no user".into()))?;
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'))
        .ok_or_else(|| AuthError::Rejected(format!("{username:?} is not a ServiceAccount")))?;
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(key))
            .and_then(|values| values.first())
            .cloned()
    };
    Ok(Identity {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod_name: extra(POD_NAME_EXTRA),
        pod_uid: extra(POD_UID_EXTRA),
    })
}

/// May `identity` receive the config of the Gateway named in `hello`? `expected_sa` is the
/// ServiceAccount provisioned for that Gateway (None: not a Gateway of ours).
pub fn authorize(
    identity: &Identity,
    hello: &Hello,
    expected_sa: Option<&str>,
) -> Result<(), String> {
    let gateway = format!("{}/{}", hello.gateway_namespace, hello.gateway_name);
    let Some(expected) = expected_sa else {
        return Err(format!("Gateway {gateway} is not served by Portcullis"));
    };
    if identity.namespace != hello.gateway_namespace || identity.service_account != expected {
        return Err(format!(
            "ServiceAccount {}/{} may not receive the config of Gateway {gateway}",
            identity.namespace, identity.service_account
        ));
    }
    let (Some(pod_name), Some(pod_uid)) = (&identity.pod_name, &identity.pod_uid) else {
        return Err("the token is not bound to a pod".into());
    };
    if hello.pod_namespace != identity.namespace
        || &hello.pod_name != pod_name
        || &hello.pod_uid != pod_uid
    {
        return Err(format!(
            "the token belongs to pod {}/{pod_name} ({pod_uid}), not {}/{} ({})",
            identity.namespace, hello.pod_namespace, hello.pod_name, hello.pod_uid
        ));
    }
    Ok(())
}

/// The ServiceAccount provisioned for a Gateway, None when the Gateway is not ours (the
/// controller provides it: `provision::resource_name(gateway, class)`).
pub type ServiceAccountLookup = Arc<dyn Fn(&ObjectKey) -> Option<String> + Send + Sync>;

/// Timeouts of the config server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// The Hello must arrive within this after the call starts.
    pub hello_timeout: Duration,
    /// A TokenReview must answer within this.
    pub auth_timeout: Duration,
    /// HTTP/2 PING interval, and how long an unanswered PING keeps a connection.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// After the shutdown signal, how long to wait for connections to close.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

struct Inner<A> {
    hub: ConfigHub,
    authenticator: A,
    expected_sa: ServiceAccountLookup,
    options: ServerOptions,
    metrics: StreamMetrics,
    /// The live stream of each pod, and how to stop it when the pod connects again.
    sessions: Mutex<HashMap<PodId, (u64, watch::Sender<bool>)>>,
    next_session: AtomicU64,
    shutdown: watch::Sender<bool>,
}

/// The `ConfigStream` service.
pub struct ConfigService<A> {
    inner: Arc<Inner<A>>,
}

impl<A> Clone for ConfigService<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<A: Authenticator> ConfigService<A> {
    /// A service counting into `metrics` (the operator's `Metrics::streams`).
    pub fn new(
        hub: ConfigHub,
        authenticator: A,
        expected_sa: ServiceAccountLookup,
        options: ServerOptions,
        metrics: StreamMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                hub,
                authenticator,
                expected_sa,
                options,
                metrics,
                sessions: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(1),
                shutdown: watch::channel(false).0,
            }),
        }
    }

    async fn open(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<ReceiverStream<Result<Update, Status>>, Status> {
        let inner = &self.inner;
        let token = bearer_token(&request)?;
        let identity = match tokio::time::timeout(
            inner.options.auth_timeout,
            inner.authenticator.authenticate(&token),
        )
        .await
        {
            Ok(Ok(identity)) => identity,
            Ok(Err(AuthError::Rejected(reason))) => {
                tracing::warn!(%reason, "config stream: token rejected");
                return Err(Status::unauthenticated(reason));
            }
            Ok(Err(error @ AuthError::Unavailable(_))) => {
                tracing::warn!(%error, "config stream: token not checked");
                return Err(Status::unavailable(error.to_string()));
            }
            Err(_) => return Err(Status::unavailable("the token check timed out")),
        };
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(inner.options.hello_timeout, inbound.message()).await
        {
            Ok(Ok(Some(AgentMessage {
                message: Some(Message::Hello(hello)),
            }))) => hello,
            Ok(Ok(_)) => return Err(Status::invalid_argument("the first message must be Hello")),
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no Hello in time")),
        };
        let gateway = ObjectKey::new(&hello.gateway_namespace, &hello.gateway_name);
        let expected = (inner.expected_sa)(&gateway);
        if let Err(reason) = authorize(&identity, &hello, expected.as_deref()) {
            tracing::warn!(%gateway, pod = %hello.pod_name, %reason, "config stream: permission denied");
            return Err(Status::permission_denied(reason));
        }
        if hello.schema_version != SCHEMA_VERSION {
            return Err(Status::failed_precondition(format!(
                "the agent speaks config schema {}, this operator {SCHEMA_VERSION}",
                hello.schema_version
            )));
        }
        let pod = PodId {
            namespace: hello.pod_namespace.clone(),
            name: hello.pod_name.clone(),
            uid: hello.pod_uid.clone(),
        };
        // Established: counted until the session (which owns the guard) is dropped.
        let connected = inner.metrics.agent_connected();
        let id = inner.next_session.fetch_add(1, Ordering::Relaxed);
        let (stop_tx, stop) = watch::channel(false);
        if let Some((_, previous)) = lock(&inner.sessions).insert(pod.clone(), (id, stop_tx)) {
            // The pod reconnected before its old stream was found dead.
            previous.send_replace(true);
        }
        let state = StreamState::from_hello(&hello);
        inner.hub.report(&gateway, &pod, |r| {
            r.connected = true;
            r.applied_hash = state.applied;
            r.applied_generation = hello.last_applied_generation;
        });
        tracing::info!(%gateway, pod = %pod.name, generation = hello.last_applied_generation,
            agent = %hello.agent_version, "config stream opened");
        let (tx, rx) = mpsc::channel(1);
        let session = Session {
            inner: inner.clone(),
            gateway,
            pod,
            id,
            state,
            inbound,
            tx,
            stop,
            shutdown: inner.shutdown.subscribe(),
            _connected: connected,
        };
        tokio::spawn(session.run());
        Ok(ReceiverStream::new(rx))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bearer_token<T>(request: &Request<T>) -> Result<String, Status> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("no authorization metadata"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
    value
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("the authorization metadata is not a bearer token"))
}

#[tonic::async_trait]
impl<A: Authenticator> ConfigStream for ConfigService<A> {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send + 'static>>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let stream = self.open(request).await?;
        Ok(Response::new(Box::pin(stream)))
    }
}

fn hash_of(bytes: &[u8]) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(bytes).ok()
}

/// What one stream knows about its pod; decides what to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// The highest generation the agent reported or that was sent on this stream.
    pub generation: u64,
    /// Content the proxy serves, per the agent.
    pub applied: Option<[u8; 32]>,
    /// Content the proxy NACKed; not sent again while it stays the published content.
    pub rejected: Option<[u8; 32]>,
    /// The generation sent and not reported yet.
    pub outstanding: Option<u64>,
}

impl StreamState {
    pub fn from_hello(hello: &Hello) -> Self {
        Self {
            generation: hello.last_applied_generation,
            applied: hash_of(&hello.last_applied_hash),
            rejected: None,
            outstanding: None,
        }
    }

    /// The generation to send `published` as, if it should be sent now.
    pub fn wants(&mut self, published: &[u8; 32]) -> Option<u64> {
        if self.rejected.is_some_and(|r| &r != published) {
            // The content moved on; should the NACKed content come back, try it again.
            self.rejected = None;
        }
        if self.outstanding.is_some()
            || self.applied.as_ref() == Some(published)
            || self.rejected.as_ref() == Some(published)
        {
            return None;
        }
        Some(self.generation + 1)
    }

    pub fn sent(&mut self, generation: u64) {
        self.generation = self.generation.max(generation);
        self.outstanding = Some(generation);
    }

    pub fn on_report(&mut self, report: &Report) {
        self.generation = self.generation.max(report.generation);
        if self.outstanding.is_some_and(|g| g <= report.generation) {
            self.outstanding = None;
        }
        let hash = hash_of(&report.content_hash);
        if report.ok {
            self.applied = hash;
        } else if hash.is_some() {
            self.rejected = hash;
        }
    }
}

/// The Update carrying `published` as `generation`.
pub fn build_update(published: &Published, generation: u64) -> Result<Update> {
    let mut config = (*published.config).clone();
    config.generation = generation;
    let config_json = serde_json::to_vec(&config).context("serializing the config")?;
    Ok(Update {
        generation,
        schema_version: config.schema_version,
        config_json,
        content_hash: published.content_hash.to_vec(),
    })
}

struct Session<A> {
    inner: Arc<Inner<A>>,
    gateway: ObjectKey,
    pod: PodId,
    id: u64,
    state: StreamState,
    inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Result<Update, Status>>,
    stop: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    /// Keeps this stream in `connected_agents` until the session is dropped.
    _connected: ConnectedAgent,
}

/// Why a session loop ended.
enum End {
    /// The agent closed its side or went away.
    Closed,
    /// End the call with this status.
    Status(Status),
}

impl<A: Authenticator> Session<A> {
    async fn run(mut self) {
        let end = self.serve().await;
        if let End::Status(status) = end {
            tracing::info!(gateway = %self.gateway, pod = %self.pod.name, status = %status.message(),
                "config stream ended");
            // The agent may still be reading an Update; give it a moment to take the status.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tx.send(Err(status))).await;
        } else {
            tracing::info!(gateway = %self.gateway, pod = %self.pod.name, "config stream closed");
        }
        let mut sessions = lock(&self.inner.sessions);
        if sessions
            .get(&self.pod)
            .is_some_and(|(id, _)| *id == self.id)
        {
            sessions.remove(&self.pod);
            drop(sessions);
            self.inner
                .hub
                .report(&self.gateway, &self.pod, |r| r.connected = false);
        }
    }

    async fn serve(&mut self) -> End {
        if *self.shutdown.borrow() {
            return End::Status(Status::unavailable("the config server is shutting down"));
        }
        // Never serve before the controller has a complete view.
        let mut synced = self.inner.hub.synced();
        while !*synced.borrow_and_update() {
            tokio::select! {
                changed = synced.changed() => if changed.is_err() {
                    return End::Status(Status::unavailable("the config server is shutting down"));
                },
                message = self.inbound.message() => if let Some(end) = self.on_message(message) {
                    return end;
                },
                end = stopped(&mut self.stop, &mut self.shutdown) => return end,
            }
        }
        let mut configs = self.inner.hub.subscribe(&self.gateway);
        let tx = self.tx.clone();
        loop {
            let current = configs.borrow_and_update().clone();
            if let Some(published) = current
                && let Some(generation) = self.state.wants(&published.content_hash)
            {
                let update = match build_update(&published, generation) {
                    Ok(update) => update,
                    Err(error) => return End::Status(Status::internal(format!("{error:#}"))),
                };
                let permit = tokio::select! {
                    permit = tx.reserve() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return End::Closed,
                    },
                    message = self.inbound.message() => match self.on_message(message) {
                        Some(end) => return end,
                        None => continue,
                    },
                    end = stopped(&mut self.stop, &mut self.shutdown) => return end,
                };
                self.state.sent(generation);
                tracing::debug!(gateway = %self.gateway, pod = %self.pod.name, generation, "sending config");
                self.inner.metrics.config_pushes.inc();
                permit.send(Ok(update));
            }
            tokio::select! {
                changed = configs.changed() => if changed.is_err() {
                    return End::Status(Status::not_found(format!("Gateway {} is gone", self.gateway)));
                },
                message = self.inbound.message() => if let Some(end) = self.on_message(message) {
                    return end;
                },
                end = stopped(&mut self.stop, &mut self.shutdown) => return end,
                () = tx.closed() => return End::Closed,
            }
        }
    }

    /// Handles one message from the agent; Some when the session is over.
    fn on_message(&mut self, message: Result<Option<AgentMessage>, Status>) -> Option<End> {
        match message {
            Ok(Some(AgentMessage {
                message: Some(Message::Report(report)),
            })) => {
                self.state.on_report(&report);
                self.inner.metrics.reported(report.ok);
                if !report.ok {
                    tracing::warn!(gateway = %self.gateway, pod = %self.pod.name,
                        generation = report.generation, error = %report.error, "config rejected by the proxy");
                }
                let hash = hash_of(&report.content_hash);
                self.inner.hub.report(&self.gateway, &self.pod, |r| {
                    r.connected = true;
                    if report.ok {
                        r.applied_hash = hash;
                        r.applied_generation = report.generation;
                        r.last_error = None;
                    } else {
                        r.last_error = Some(if report.error.is_empty() {
                            format!("generation {} was rejected", report.generation)
                        } else {
                            report.error.clone()
                        });
                    }
                });
                None
            }
            Ok(Some(AgentMessage {
                message: Some(Message::Hello(_)),
            })) => Some(End::Status(Status::invalid_argument("Hello sent twice"))),
            Ok(Some(AgentMessage { message: None })) => None,
            Ok(None) => Some(End::Closed),
            Err(status) => {
                tracing::debug!(gateway = %self.gateway, pod = %self.pod.name, %status, "agent stream error");
                Some(End::Closed)
            }
        }
    }
}

/// Resolves when this session is replaced or the server shuts down.
async fn stopped(stop: &mut watch::Receiver<bool>, shutdown: &mut watch::Receiver<bool>) -> End {
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => End::Status(Status::aborted("the pod opened a newer stream")),
        _ = shutdown.wait_for(|stop| *stop) => End::Status(Status::unavailable("the config server is shutting down")),
    }
}

/// Serves `service` on `listener` with TLS `tls` until `shutdown` resolves.
pub async fn serve<A: Authenticator>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: ConfigService<A>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let options = service.inner.options.clone();
    let (connections, incoming) = mpsc::channel(16);
    let accept = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(tls),
        connections,
        service.inner.shutdown.subscribe(),
        options.handshake_timeout,
    ));
    let inner = service.inner.clone();
    let signal = async move {
        shutdown.await;
        inner.shutdown.send_replace(true);
    };
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .max_concurrent_streams(Some(8))
        .add_service(
            ConfigStreamServer::new(service.clone())
                .max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_UPDATE_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), signal);
    let mut down = service.inner.shutdown.subscribe();
    let result = tokio::select! {
        result = server => result.context("the config server failed"),
        _ = async {
            let _ = down.wait_for(|down| *down).await;
            tokio::time::sleep(options.shutdown_grace).await;
        } => Ok(()),
    };
    accept.abort();
    result
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
    mut shutdown: watch::Receiver<bool>,
    handshake_timeout: Duration,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|down| *down) => return,
            () = connections.closed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(%error, "config server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = connections.send(Ok(tls)).await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "config server: TLS handshake failed");
                }
                Err(_) => tracing::debug!(%peer, "config server: TLS handshake timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn identity() -> Identity {
        Identity {
            namespace: "infra".into(),
            service_account: "gw-portcullis".into(),
            pod_name: Some("gw-portcullis-abc".into()),
            pod_uid: Some("uid-1".into()),
        }
    }

    fn hello() -> Hello {
        Hello {
            schema_version: SCHEMA_VERSION,
            gateway_namespace: "infra".into(),
            gateway_name: "gw".into(),
            pod_name: "gw-portcullis-abc".into(),
            pod_namespace: "infra".into(),
            pod_uid: "uid-1".into(),
            agent_version: "test".into(),
            last_applied_generation: 0,
            last_applied_hash: Vec::new(),
        }
    }

    #[test]
    fn authorization() {
        let expected = Some("gw-portcullis");
        assert_eq!(authorize(&identity(), &hello(), expected), Ok(()));
        // Not our Gateway.
        assert!(authorize(&identity(), &hello(), None).is_err());
        // Another Gateway's ServiceAccount.
        let error = authorize(&identity(), &hello(), Some("other-portcullis")).unwrap_err();
        assert!(error.contains("may not receive"), "{error}");
        // The same ServiceAccount name in another namespace.
        let mut other_ns = identity();
        other_ns.namespace = "evil".into();
        assert!(authorize(&other_ns, &hello(), expected).is_err());
        // Another pod than the token's.
        for change in [
            |h: &mut Hello| h.pod_name = "gw-portcullis-other".into(),
            |h: &mut Hello| h.pod_uid = "uid-2".into(),
            |h: &mut Hello| h.pod_namespace = "elsewhere".into(),
        ] {
            let mut h = hello();
            change(&mut h);
            let error = authorize(&identity(), &h, expected).unwrap_err();
            assert!(error.contains("token belongs to pod"), "{error}");
        }
        // A token not bound to a pod.
        let mut unbound = identity();
        unbound.pod_uid = None;
        assert!(authorize(&unbound, &hello(), expected).is_err());
    }

    fn review(username: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            audiences: Some(vec![TOKEN_AUDIENCE.into()]),
            authenticated: Some(true),
            error: None,
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..UserInfo::default()
            }),
        }
    }

    #[test]
    fn token_reviews() {
        let status = review(
            "system:serviceaccount:infra:gw-portcullis",
            &[
                (POD_NAME_EXTRA, "gw-portcullis-abc"),
                (POD_UID_EXTRA, "uid-1"),
            ],
        );
        assert_eq!(
            identity_from_review(Some(&status), TOKEN_AUDIENCE),
            Ok(identity())
        );

        let mut rejected = status.clone();
        rejected.authenticated = Some(false);
        rejected.error = Some("token expired".into());
        assert_eq!(
            identity_from_review(Some(&rejected), TOKEN_AUDIENCE),
            Err(AuthError::Rejected(
                "the token is not valid: token expired".into()
            ))
        );
        let mut wrong_audience = status.clone();
        wrong_audience.audiences = Some(vec!["https://kubernetes.default.svc".into()]);
        assert!(matches!(
            identity_from_review(Some(&wrong_audience), TOKEN_AUDIENCE),
            Err(AuthError::Rejected(_))
        ));
        let user = review("alice", &[]);
        assert!(matches!(
            identity_from_review(Some(&user), TOKEN_AUDIENCE),
            Err(AuthError::Rejected(_))
        ));
        let unbound = review("system:serviceaccount:infra:gw-portcullis", &[]);
        let identity = identity_from_review(Some(&unbound), TOKEN_AUDIENCE).unwrap();
        assert_eq!(identity.pod_name, None);
        assert!(matches!(
            identity_from_review(None, TOKEN_AUDIENCE),
            Err(AuthError::Unavailable(_))
        ));
    }

    fn report(generation: u64, hash: [u8; 32], ok: bool) -> Report {
        Report {
            generation,
            content_hash: hash.to_vec(),
            ok,
            error: if ok { String::new() } else { "no".into() },
        }
    }

    #[test]
    fn generations_and_resends() {
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let mut h = hello();
        h.last_applied_generation = 7;
        h.last_applied_hash = a.to_vec();
        let mut state = StreamState::from_hello(&h);
        // What the proxy already serves is not sent (operator restart).
        assert_eq!(state.wants(&a), None);
        // New content goes out above the agent's generation, one at a time.
        assert_eq!(state.wants(&b), Some(8));
        state.sent(8);
        assert_eq!(state.wants(&c), None, "one update outstanding");
        state.on_report(&report(8, b, true));
        assert_eq!(state.wants(&b), None);
        assert_eq!(state.wants(&c), Some(9));
        state.sent(9);
        // A NACK: the same content is not resent, newer content is, above the NACKed one.
        state.on_report(&report(9, c, false));
        assert_eq!(state.applied, Some(b));
        assert_eq!(state.wants(&c), None);
        assert_eq!(state.wants(&a), Some(10));
        // Having moved on, the NACKed content may be tried again.
        assert_eq!(state.wants(&c), Some(10));
        // An older report does not clear the outstanding update.
        state.sent(10);
        state.on_report(&report(9, b, true));
        assert_eq!(state.outstanding, Some(10));
    }

    #[test]
    fn updates_carry_the_generation_in_the_json() {
        let mut config = portcullis_api::CompiledConfig::empty(0);
        config.settings.max_header_count = 33;
        let published = Published {
            content_hash: config.content_hash(),
            config: Arc::new(config),
        };
        let update = build_update(&published, 12).unwrap();
        let decoded = portcullis_api::frame::decode_json(&update.config_json).unwrap();
        assert_eq!(decoded.generation, 12);
        assert_eq!(update.generation, 12);
        assert_eq!(decoded.content_hash().to_vec(), update.content_hash);
    }
}
