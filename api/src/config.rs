//! The compiled config: everything one Gateway's proxies need, already resolved.
//!
//! The operator (and standalone mode) produce it from Gateway API objects; the proxy consumes
//! only this. Nothing here refers back to Kubernetes: Services are already endpoints, Secrets
//! are already PEM, and attachment and hostname intersection are already decided.

mod exact_capacity;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The schema version this build reads and writes. A proxy NACKs any other version.
pub const SCHEMA_VERSION: u32 = 1;

/// One Gateway's complete data-plane configuration at one generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompiledConfig {
    pub schema_version: u32,
    /// Monotonic per Gateway. The proxy refuses to go backwards.
    pub generation: u64,
    #[serde(default)]
    pub gateway: GatewayIdentity,
    /// One entry per bound port; Gateway listeners that share a port are merged into one.
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    #[serde(default)]
    pub settings: ProxySettings,
}

impl CompiledConfig {
    /// An empty config at `generation`: no ports, nothing served.
    pub fn empty(generation: u64) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            generation,
            gateway: GatewayIdentity::default(),
            ports: Vec::new(),
            backends: Vec::new(),
            certificates: Vec::new(),
            settings: ProxySettings::default(),
        }
    }

    /// SHA-256 over the serialized config with the generation left out, so two compilations of
    /// the same inputs hash equal and an unchanged config never needs a push.
    pub fn content_hash(&self) -> [u8; 32] {
        let mut unversioned = self.clone();
        unversioned.generation = 0;
        // Serializing plain data structs to a Vec cannot fail: no maps with non-string keys,
        // no custom serializers.
        let bytes = serde_json::to_vec(&unversioned).unwrap_or_default();
        Sha256::digest(&bytes).into()
    }

    /// A copy safe to show to operators: private keys replaced by a marker.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for certificate in &mut copy.certificates {
            certificate.private_key_pem = REDACTED.to_string();
        }
        copy
    }
}

/// What `redacted` puts in place of a private key.
pub const REDACTED: &str = "<redacted>";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayIdentity {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PortProtocol {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
    /// TLS streams routed by SNI to TCP backends (TLSRoute): passed through untouched, or
    /// terminated here, per listener.
    #[serde(rename = "TLS")]
    Tls,
    /// TCP connections forwarded whole to TCP backends (TCPRoute).
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP datagrams forwarded to UDP backends (UDPRoute), per client address and port.
    #[serde(rename = "UDP")]
    Udp,
}

/// What a port's sockets carry. A port number may appear twice in a config, once per transport
/// (DNS: TCP and UDP 53), as Gateway listeners of protocols TCP and UDP on one port are distinct.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn transport(self) -> Transport {
        match self {
            PortProtocol::Udp => Transport::Udp,
            PortProtocol::Http | PortProtocol::Https | PortProtocol::Tls | PortProtocol::Tcp => {
                Transport::Tcp
            }
        }
    }

    /// Whether a port of this protocol terminates TLS (and so holds a TLS config, sessions and
    /// client validation): HTTPS always, TLS when one of its listeners does not pass through.
    /// `passthrough` says, per listener, whether it passes TLS through.
    pub fn terminates_tls(self, mut passthrough: impl Iterator<Item = bool>) -> bool {
        match self {
            PortProtocol::Https => true,
            PortProtocol::Tls => passthrough.any(|p| !p),
            PortProtocol::Http | PortProtocol::Tcp | PortProtocol::Udp => false,
        }
    }
}

/// A listening port and the Gateway listeners that share it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub port: u16,
    pub protocol: PortProtocol,
    pub listeners: Vec<Listener>,
    /// Client certificates the port asks for when it terminates TLS (the Gateway's
    /// `tls.frontend`); none asked for when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidation>,
    /// TLS-terminating ports only: no session tickets are issued or accepted, so every
    /// handshake is a full one. Returning clients pay for it; in exchange no session secret
    /// outlives its connection (a TLS 1.2 ticket carries its session's master secret, sealed
    /// with a key shared by every core).
    #[serde(default, skip_serializing_if = "is_false")]
    pub session_resumption_disabled: bool,
}

/// How a TLS-terminating port checks client certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientValidation {
    /// PEM trust anchors a client certificate's chain must lead to.
    pub ca_certificates_pem: String,
    pub mode: ClientValidationMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientValidationMode {
    /// A client without a valid certificate is refused in the handshake.
    #[default]
    AllowValidOnly,
    /// Clients are asked for a certificate, but one that is missing or does not verify is let
    /// through (for migrations; the Gateway reports InsecureFrontendValidationMode).
    AllowInsecureFallback,
}

/// A Gateway listener: a hostname (or none, meaning any) and the routes attached to it.
/// A request is served by exactly one listener of its port, the one whose hostname matches
/// the request host most specifically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Names of entries in `CompiledConfig::certificates`; required on HTTPS ports.
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub certificates: Vec<String>,
    /// Routes in tie-break order: oldest first, then by "namespace/name".
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub routes: Vec<HttpRoute>,
    /// TLS ports only: hand the client's TLS stream to the backend unopened (the backend
    /// holds the certificate) instead of terminating it with `certificates`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub passthrough: bool,
    /// TLS and TCP ports, instead of `routes`: the TLSRoutes or TCPRoutes, in tie-break
    /// order. A TCP port has one listener, and its first route takes every connection.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "exact_capacity::vec"
    )]
    pub stream_routes: Vec<StreamRoute>,
}

// New fields are left out while unset, so configs without them hash as they always did.
fn is_false(value: &bool) -> bool {
    !*value
}

/// A route of whole connections on one listener (TLSRoute, TCPRoute): connections whose SNI
/// matches `hostnames` (always, for TCP) go to one of the weighted backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRoute {
    /// "namespace/name", used in metrics and logs.
    pub name: String,
    /// Effective hostnames (already intersected with the listener's); empty means any server
    /// name the listener accepts, and connections without SNI.
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub hostnames: Vec<String>,
    /// Empty, or all weights zero: connections are refused.
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub backends: Vec<WeightedBackend>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// "namespace/name", used in metrics and logs.
    pub name: String,
    /// Effective hostnames (already intersected with the listener's); empty means any host
    /// the listener accepts.
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub hostnames: Vec<String>,
    #[serde(deserialize_with = "exact_capacity::vec")]
    pub rules: Vec<RouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    #[serde(default)]
    pub name: Option<String>,
    /// Empty means one match on path prefix "/".
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub filters: Vec<Filter>,
    /// Empty means every request matched by this rule is answered 500, as Gateway API requires.
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub backends: Vec<WeightedBackend>,
    #[serde(default)]
    pub timeouts: RuleTimeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// Most retries one request may make (after its first attempt).
pub const MAX_RETRY_ATTEMPTS: u32 = 16;
/// Longest first wait before a retry (one hour; later waits double up to 32 times this).
pub const MAX_RETRY_BACKOFF_MS: u64 = 3_600_000;

/// Retries of a rule's requests: an attempt that got no response (the connect failed, the
/// connection reset or closed before a response head, the backend request timeout passed)
/// or a response with one of `codes` (which may be empty) is abandoned and the request sent
/// again (to the next endpoint of the same backend), at most `attempts` times, waiting
/// `backoff_ms` before the first retry and twice as long before each next one. Only requests
/// held whole in the proxy (no body, or a small one that arrived with the head) are retried;
/// the rest get the first outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub codes: Vec<u16>,
    pub attempts: u32,
    #[serde(default)]
    pub backoff_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTimeouts {
    /// Whole request, from the first byte of the request head to the end of the response.
    #[serde(default)]
    pub request_ms: Option<u64>,
    /// One upstream attempt, from connecting to the end of the response.
    #[serde(default)]
    pub backend_request_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub path: PathMatch,
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub query_params: Vec<QueryParamMatch>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix: "/foo" matches "/foo" and "/foo/bar", not "/foobar".
    PathPrefix(String),
    RegularExpression(String),
    /// `/<any service>/<method>`: a gRPC method named without its service (the value is the
    /// method). It ranks below every prefix longer than "/" (a gRPC service match names more
    /// service characters, which GRPCRoute ranks first) and above the prefix "/".
    GrpcMethod(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::PathPrefix("/".to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum StringMatch {
    Exact(String),
    RegularExpression(String),
}

/// Header names compare case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: StringMatch,
}

/// Query parameter names compare exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParamMatch {
    pub name: String,
    pub value: StringMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(RequestRedirect),
    #[serde(rename = "URLRewrite")]
    UrlRewrite(UrlRewrite),
    #[serde(rename = "CORS")]
    Cors(Cors),
    RequestMirror(RequestMirror),
}

/// Sends a copy of each sampled request to one endpoint of another backend and ignores its
/// response. A rule may have several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMirror {
    /// Name of an entry in `CompiledConfig::backends`.
    pub backend: String,
    /// The share of requests copied is numerator / denominator; by default, all of them.
    #[serde(default = "whole")]
    pub numerator: u32,
    #[serde(default = "whole")]
    pub denominator: u32,
}

fn whole() -> u32 {
    100
}

/// Cross-origin resource sharing for a rule: the proxy answers preflight requests itself and
/// adds the CORS headers to responses for allowed origins. Requests without an `Origin`, and
/// requests from origins not allowed, are served as if the filter were absent (a preflight
/// from an origin not allowed is answered 403).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// `*`, or origins `http(s)://host[:port]` whose host may be `*` or start with `*.`
    /// (see [`crate::cors::OriginPattern`]).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods, or `*` alone.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request header names, or `*` alone.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response header names scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default = "default_cors_max_age")]
    pub max_age_seconds: u32,
}

/// The Gateway API default for an unset `maxAge`.
pub const DEFAULT_CORS_MAX_AGE_SECONDS: u32 = 5;

fn default_cors_max_age() -> u32 {
    DEFAULT_CORS_MAX_AGE_SECONDS
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub set: Vec<HeaderValue>,
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub add: Vec<HeaderValue>,
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRedirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    302
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part of the path matched by the rule's PathPrefix match.
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    pub weight: u32,
    pub target: BackendTarget,
    /// Applied only to requests sent to this backend (RequestHeaderModifier,
    /// ResponseHeaderModifier).
    #[serde(default, deserialize_with = "exact_capacity::vec")]
    pub filters: Vec<Filter>,
}

/// Where a weighted share of a rule's traffic goes. An invalid reference keeps its share and
/// that share is answered 500.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendTarget {
    /// Name of an entry in `CompiledConfig::backends`.
    Backend(String),
    /// Why the reference could not be resolved (shown in logs, never to clients).
    Invalid(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendProtocol {
    #[default]
    #[serde(rename = "HTTP/1.1")]
    Http1,
    /// HTTP/2 with prior knowledge (h2c; appProtocol `kubernetes.io/h2c`, and every GRPCRoute
    /// backend). Each core multiplexes its requests to an endpoint over one connection.
    #[serde(rename = "HTTP/2")]
    Http2,
}

/// A set of endpoints serving one Service port. No endpoints means 503.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// "namespace/service:port".
    pub name: String,
    #[serde(default)]
    pub protocol: BackendProtocol,
    #[serde(deserialize_with = "exact_capacity::vec")]
    pub endpoints: Vec<SocketAddr>,
    /// TLS to the endpoints (a BackendTLSPolicy); plaintext when absent. HTTP traffic and
    /// connections terminated on TLS ports use it; TLS passthrough and TCP ports forward bytes
    /// unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
}

/// How the proxy speaks TLS to a backend and authenticates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// "namespace/name" of the BackendTLSPolicy, for logs.
    pub policy: String,
    /// Sent as SNI. The certificate must be valid for it unless `subject_alt_names` is set.
    pub server_name: String,
    /// PEM trust anchors: the backend's chain must lead to one of them. Empty when
    /// `system_trust_anchors` is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates_pem: String,
    /// Trust the proxy's system store instead (`wellKnownCACertificates: System`): the file
    /// named by `SSL_CERT_FILE`, else the platform's bundle (`/etc/ssl/certs` on Debian-based
    /// images), loaded once per proxy process.
    #[serde(default, skip_serializing_if = "is_false")]
    pub system_trust_anchors: bool,
    /// When not empty, the certificate must carry at least one of these names, and
    /// `server_name` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SubjectAltName>,
    /// Name of an entry in `CompiledConfig::certificates` the proxy presents when the backend
    /// asks for a client certificate (the Gateway's `spec.tls.backend.clientCertificateRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
}

/// A name a backend certificate may be required to carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectAltName {
    /// A DNS name (a wildcard certificate matches it as TLS clients match hostnames).
    Hostname(String),
    /// A URI such as a SPIFFE ID, compared exactly.
    Uri(String),
}

/// A certificate chain and its private key, both PEM. Only Gateways allowed to use a Secret
/// ever receive it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// "namespace/secret".
    pub name: String,
    pub cert_chain_pem: String,
    pub private_key_pem: String,
}

/// Limits and timeouts of the HTTP engine. Defaults follow edge-proxy practice (Envoy's edge
/// guide): they are safe to face the internet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    pub max_header_count: usize,
    /// Request line plus headers; beyond it the answer is 431.
    pub max_header_bytes: usize,
    /// Beyond it the answer is 414.
    pub max_request_line_bytes: usize,
    /// The whole request head must arrive within this time (slowloris); 408 otherwise.
    pub header_read_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this time.
    pub idle_timeout_ms: u64,
    /// A request or response body that makes no progress for this long is aborted.
    pub body_idle_timeout_ms: u64,
    pub upstream_connect_timeout_ms: u64,
    /// Pooled upstream connections idle longer than this are closed.
    pub upstream_idle_timeout_ms: u64,
    pub upstream_max_idle_per_endpoint: usize,
    pub max_connections_per_core: usize,
    /// 0 means unlimited.
    pub max_requests_per_connection: u64,
    /// A request body or a response whose client delivers fewer bytes per second than this,
    /// averaged from its start, is aborted once the grace period is over: an idle timeout
    /// alone lets a client trickle a byte every few seconds and hold the connection forever.
    /// Only time spent waiting for the client counts, not time waiting for the upstream.
    /// 0 disables.
    pub min_data_rate_bytes_per_s: u64,
    pub min_data_rate_grace_ms: u64,
    /// A TLS or TCP connection (TLSRoute, TCPRoute) with no byte moving either way for this
    /// long is closed. Long, as for Envoy's TCP proxy: database and pooled connections idle
    /// for minutes between queries. Left out of the JSON at its default, so configs that do
    /// not set it hash as before it existed.
    #[serde(skip_serializing_if = "is_default_stream_idle_timeout")]
    pub stream_idle_timeout_ms: u64,
    /// A UDP session (one client address and port on a UDP port, UDPRoute) with no datagram
    /// either way for this long ends, and its upstream socket closes. Short, unlike TCP's:
    /// nothing tells a proxy a UDP exchange is over, and clients such as DNS resolvers use a
    /// new source port per query, so every session holds a socket until it times out. Left
    /// out of the JSON at its default, so configs that do not set it hash as before it existed.
    #[serde(skip_serializing_if = "is_default_udp_session_idle_timeout")]
    pub udp_session_idle_timeout_ms: u64,
    /// UDP sessions one core holds at most; a datagram that would open one more is dropped
    /// (and counted). Left out of the JSON at its default, as above.
    #[serde(skip_serializing_if = "is_default_max_udp_sessions_per_core")]
    pub max_udp_sessions_per_core: usize,
}

const DEFAULT_STREAM_IDLE_TIMEOUT_MS: u64 = 60 * 60 * 1000;

fn is_default_stream_idle_timeout(value: &u64) -> bool {
    *value == DEFAULT_STREAM_IDLE_TIMEOUT_MS
}

const DEFAULT_UDP_SESSION_IDLE_TIMEOUT_MS: u64 = 60_000;

fn is_default_udp_session_idle_timeout(value: &u64) -> bool {
    *value == DEFAULT_UDP_SESSION_IDLE_TIMEOUT_MS
}

const DEFAULT_MAX_UDP_SESSIONS_PER_CORE: usize = 10_000;

fn is_default_max_udp_sessions_per_core(value: &usize) -> bool {
    *value == DEFAULT_MAX_UDP_SESSIONS_PER_CORE
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            max_header_count: 100,
            max_header_bytes: 60 * 1024,
            max_request_line_bytes: 8 * 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_idle_timeout_ms: 60_000,
            upstream_connect_timeout_ms: 5_000,
            upstream_idle_timeout_ms: 30_000,
            upstream_max_idle_per_endpoint: 64,
            max_connections_per_core: 10_000,
            max_requests_per_connection: 0,
            // Kestrel's defaults: slower than any real client, faster than a slowloris.
            min_data_rate_bytes_per_s: 240,
            min_data_rate_grace_ms: 5_000,
            stream_idle_timeout_ms: DEFAULT_STREAM_IDLE_TIMEOUT_MS,
            udp_session_idle_timeout_ms: DEFAULT_UDP_SESSION_IDLE_TIMEOUT_MS,
            max_udp_sessions_per_core: DEFAULT_MAX_UDP_SESSIONS_PER_CORE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PortProtocol;

    #[test]
    fn a_port_terminates_tls_when_https_or_a_tls_listener_does_not_pass_through() {
        let cases = [
            (PortProtocol::Https, vec![], true),
            (PortProtocol::Tls, vec![true, false], true),
            (PortProtocol::Tls, vec![true, true], false),
            (PortProtocol::Http, vec![false], false),
            (PortProtocol::Tcp, vec![false], false),
        ];
        for (protocol, passthrough, expected) in cases {
            assert_eq!(
                protocol.terminates_tls(passthrough.iter().copied()),
                expected,
                "{protocol:?} with passthrough {passthrough:?}"
            );
        }
    }
}
