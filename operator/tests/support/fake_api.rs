//! An in-memory Kubernetes API server, served in-process as a `tower::Service` that a
//! `kube::Client` talks to, so the controller runs against it as against a cluster.
//!
//! Objects are kept as JSON by (kind, namespace, name) with a global resourceVersion counter
//! and a log of every change, from which watches are served. What it speaks:
//!
//! - LIST and WATCH of a collection, cluster-wide or in a namespace, with `labelSelector`
//!   (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (..)`, `k notin (..)`); a watch streams the
//!   changes after its `resourceVersion` (all objects as ADDED when none is given) as
//!   newline-delimited watch events, until `timeoutSeconds` or the client goes away. An object
//!   that stops (starts) matching a selector is sent as DELETED (ADDED). Bookmarks are never
//!   sent; `limit` is ignored (one page).
//! - `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`: metadata-only
//!   answers (LIST, WATCH, GET).
//! - GET, POST (create, `generateName` too), PUT (replace), DELETE of one object; a PUT or a
//!   merge PATCH carrying `metadata.resourceVersion` is conditional (409 when stale).
//! - PATCH: server-side apply (`application/apply-patch+yaml`; creates or merges, records the
//!   field manager and the leaf fields it owns, removes fields a manager stopped applying when
//!   no other manager owns them, 409 on a conflict unless `force=true`; lists are atomic),
//!   JSON merge patch (`application/merge-patch+json`, strategic merge treated alike) and JSON
//!   patch (add/remove/replace/test).
//! - The `status` subresource: GET, PUT and PATCH on `.../status` change `status` only; writes to
//!   the object itself leave `status` alone. `metadata.generation` rises when anything but
//!   metadata and status changes. A Service gets a ClusterIP when created without one.
//!
//! Every request is recorded ([`FakeApi::requests`]); requests it does not know are answered
//! 404 and recorded loudly ([`FakeApi::unknown`]). Tests inject failures
//! ([`FakeApi::fail_next`]) and change objects while clients watch ([`FakeApi::create`],
//! [`FakeApi::modify`], [`FakeApi::delete`]).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Frame;
use kube::client::Body;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

/// A kind the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn rt(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
    }
}

/// Every kind the fake knows (kinds are unique, so tests name objects by kind).
pub const RESOURCES: &[ResourceType] = &[
    rt("", "v1", "namespaces", "Namespace", false),
    rt("", "v1", "services", "Service", true),
    rt("", "v1", "secrets", "Secret", true),
    rt("", "v1", "pods", "Pod", true),
    rt("", "v1", "serviceaccounts", "ServiceAccount", true),
    rt("", "v1", "configmaps", "ConfigMap", true),
    rt("apps", "v1", "deployments", "Deployment", true),
    rt(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
    ),
    rt("coordination.k8s.io", "v1", "leases", "Lease", true),
    rt("events.k8s.io", "v1", "events", "Event", true),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "gatewayclasses",
        "GatewayClass",
        false,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "gateways",
        "Gateway",
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "listenersets",
        "ListenerSet",
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "httproutes",
        "HTTPRoute",
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "grpcroutes",
        "GRPCRoute",
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "tlsroutes",
        "TLSRoute",
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "tcproutes",
        "TCPRoute",
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "udproutes",
        "UDPRoute",
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "referencegrants",
        "ReferenceGrant",
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "backendtlspolicies",
        "BackendTLSPolicy",
        true,
    ),
    rt(
        "portcullis.dev",
        "v1alpha1",
        "gatewayparameters",
        "GatewayParameters",
        true,
    ),
];

pub fn resource_by_kind(kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

fn resource_by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// One request as the fake saw it, with its route parsed and the code it answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    /// The body as JSON (Null when empty, a string when not JSON).
    pub body: Value,
    /// Parsed route: the kind addressed, namespace, name and subresource.
    pub kind: Option<&'static str>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    pub watch: bool,
    /// The HTTP status answered (watches: 200 when the stream was opened).
    pub code: u16,
}

impl RecordedRequest {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    pub fn is_status_patch(&self) -> bool {
        self.method == Method::PATCH && self.subresource.as_deref() == Some("status")
    }

    pub fn is_apply(&self) -> bool {
        self.method == Method::PATCH
            && self.content_type.as_deref() == Some("application/apply-patch+yaml")
    }

    pub fn field_manager(&self) -> Option<&str> {
        self.query.get("fieldManager").map(String::as_str)
    }

    /// `kind ns/name[/sub]`, for messages.
    pub fn target(&self) -> String {
        format!(
            "{} {}/{}{}",
            self.kind.unwrap_or("?"),
            self.namespace.as_deref().unwrap_or(""),
            self.name.as_deref().unwrap_or("*"),
            self.subresource
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default()
        )
    }
}

impl fmt::Display for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if !self.query.is_empty() {
            let query: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, "?{}", query.join("&"))?;
        }
        if let Some(ct) = &self.content_type {
            write!(f, " [{ct}]")?;
        }
        write!(f, " -> {}", self.code)
    }
}

type Matcher = Box<dyn Fn(&RecordedRequest) -> bool + Send>;

struct Fault {
    matches: Matcher,
    remaining: usize,
    code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    kind: &'static str,
    namespace: String,
    name: String,
}

/// One change in the log watches are served from.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    namespace: String,
    /// "ADDED", "MODIFIED" or "DELETED".
    event: &'static str,
    object: Value,
    /// The object before a modification (for selector transitions).
    previous: Option<Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    cluster_ip: u32,
    objects: BTreeMap<Key, Value>,
    /// Server-side apply: per object, per manager, the leaf fields (JSON pointers) it owns.
    managers: BTreeMap<Key, BTreeMap<String, BTreeSet<String>>>,
    log: Vec<Change>,
    requests: Vec<RecordedRequest>,
    faults: Vec<Fault>,
    unknown: Vec<String>,
    /// Kinds whose CRD is "not installed": left out of discovery, their paths answer 404.
    uninstalled: BTreeSet<&'static str>,
}

struct Inner {
    state: Mutex<State>,
    /// The newest resourceVersion; watches wait on it.
    latest: watch::Sender<u64>,
}

/// The fake API server; cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

/// An API error: the HTTP code, a `Status` reason and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

fn error(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        reason,
        message: message.into(),
    }
}

impl ApiError {
    fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    rv: 1000,
                    ..State::default()
                }),
                latest: watch::channel(1000).0,
            }),
        }
    }

    /// A client whose requests this fake serves.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self, state: &State) {
        self.inner.latest.send_replace(state.rv);
    }

    // ---- test-side access ---------------------------------------------------------------

    /// Creates an object (its `apiVersion`/`kind` pick the resource); returns it as stored.
    pub fn create(&self, object: Value) -> Value {
        let kind = object["kind"]
            .as_str()
            .expect("the object has a kind")
            .to_string();
        let rt = resource_by_kind(&kind).unwrap_or_else(|| panic!("the fake has no kind {kind}"));
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut state = self.lock();
        let created = state
            .create(rt, &namespace, object)
            .unwrap_or_else(|e| panic!("creating a {kind}: {}", e.message));
        self.notify(&state);
        created
    }

    /// The stored object (`namespace` "" for cluster-scoped kinds).
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = resource_by_kind(kind)?.kind;
        self.lock()
            .objects
            .get(&Key {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            })
            .cloned()
    }

    /// Every stored object of a kind.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.kind == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes an object in place (spec, status, anything), as another client would; watches
    /// see a MODIFIED event. Returns the stored result.
    pub fn modify(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Value {
        let rt = resource_by_kind(kind).unwrap_or_else(|| panic!("the fake has no kind {kind}"));
        let key = Key {
            kind: rt.kind,
            namespace: namespace.into(),
            name: name.into(),
        };
        let mut state = self.lock();
        let mut object = state
            .objects
            .get(&key)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} to modify"));
        change(&mut object);
        let stored = state.store(&key, object, true);
        self.notify(&state);
        stored
    }

    /// Deletes an object; watches see a DELETED event.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let rt = resource_by_kind(kind)?;
        let key = Key {
            kind: rt.kind,
            namespace: namespace.into(),
            name: name.into(),
        };
        let mut state = self.lock();
        let deleted = state.remove(&key).ok();
        self.notify(&state);
        deleted
    }

    /// The field managers that applied or updated the object, sorted.
    pub fn field_managers(&self, kind: &str, namespace: &str, name: &str) -> Vec<String> {
        let Some(rt) = resource_by_kind(kind) else {
            return Vec::new();
        };
        self.lock()
            .managers
            .get(&Key {
                kind: rt.kind,
                namespace: namespace.into(),
                name: name.into(),
            })
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The requests `filter` selects.
    pub fn requests_where(
        &self,
        filter: impl Fn(&RecordedRequest) -> bool,
    ) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| filter(r))
            .cloned()
            .collect()
    }

    /// Takes `kind` out of the API, as a cluster without its CRD: discovery leaves it out and
    /// its paths answer 404 NotFound.
    pub fn uninstall(&self, kind: &'static str) {
        self.lock().uninstalled.insert(kind);
    }

    /// Requests the fake did not know how to serve (answered 404).
    pub fn unknown(&self) -> Vec<String> {
        self.lock().unknown.clone()
    }

    /// The next `times` requests that `matches` selects answer `code` (a `Status` error) and
    /// change nothing. Several faults may be armed; the first that matches answers.
    pub fn fail_next(
        &self,
        times: usize,
        code: u16,
        matches: impl Fn(&RecordedRequest) -> bool + Send + 'static,
    ) {
        self.lock().faults.push(Fault {
            matches: Box::new(matches),
            remaining: times,
            code,
        });
    }

    /// Disarms every fault (the API "recovers").
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// How many injected failures are still armed.
    pub fn faults_left(&self) -> usize {
        self.lock().faults.iter().map(|f| f.remaining).sum()
    }

    /// The last requests, one a line, for failure messages.
    pub fn summary(&self, last: usize) -> String {
        let state = self.lock();
        let skip = state.requests.len().saturating_sub(last);
        let mut out: Vec<String> = state.requests[skip..]
            .iter()
            .map(ToString::to_string)
            .collect();
        for unknown in &state.unknown {
            out.push(format!("UNKNOWN: {unknown}"));
        }
        out.join("\n")
    }

    // ---- serving ------------------------------------------------------------------------

    async fn serve(self, request: Request<Body>) -> Response<FakeBody> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        let header = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let query = parse_query(parts.uri.query().unwrap_or_default());
        let path = parts.uri.path().to_string();
        let route = parse_path(&path);
        let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        let mut recorded = RecordedRequest {
            method: parts.method.clone(),
            path,
            query,
            content_type: header(header::CONTENT_TYPE),
            accept: header(header::ACCEPT),
            body,
            kind: route.as_ref().map(|r| r.rt.kind),
            namespace: route.as_ref().and_then(|r| r.namespace.clone()),
            name: route.as_ref().and_then(|r| r.name.clone()),
            subresource: route.as_ref().and_then(|r| r.subresource.clone()),
            watch,
            code: 0,
        };

        let mut state = self.lock();
        let fault = state
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && (f.matches)(&recorded))
            .map(|f| {
                f.remaining -= 1;
                f.code
            });
        state.faults.retain(|f| f.remaining > 0);
        let outcome = match (fault, route) {
            (Some(code), _) => Err(error(code, "InternalError", "injected failure")),
            (None, Some(route)) if state.uninstalled.contains(route.rt.kind) => Err(error(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
            (None, None) if parts.method == Method::GET => {
                match discovery(&recorded.path, &state.uninstalled) {
                    Some(list) => Ok(Reply::Json((StatusCode::OK, list))),
                    None => Err(unknown(&mut state, &recorded, "no such resource path")),
                }
            }
            (None, None) => Err(unknown(&mut state, &recorded, "no such resource path")),
            (None, Some(route)) => state.handle(&route, &recorded, &self),
        };
        self.notify(&state);
        recorded.code = match &outcome {
            Ok(Reply::Json((code, _))) => code.as_u16(),
            Ok(Reply::Watch(_)) => 200,
            Err(e) => e.code,
        };
        state.requests.push(recorded);
        drop(state);

        match outcome {
            Ok(Reply::Json((code, value))) => json_response(code, &value),
            Ok(Reply::Watch(rx)) => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(FakeBody::Stream(rx))
                .expect("a valid response"),
            Err(e) => json_response(
                StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &e.status(),
            ),
        }
    }

    /// Serves a watch from `from` (exclusive) until `timeout` or the client goes away.
    fn spawn_watch(&self, watch: WatchSpec) -> mpsc::UnboundedReceiver<Bytes> {
        let WatchSpec {
            rt,
            namespace,
            selector,
            metadata_only,
            initial,
            from,
            timeout,
        } = watch;
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let fake = self.clone();
        let mut latest = self.inner.latest.subscribe();
        let render = move |event: &str, object: &Value| -> Bytes {
            let object = if metadata_only {
                partial(object)
            } else {
                object.clone()
            };
            let mut line =
                serde_json::to_vec(&json!({"type": event, "object": object})).expect("JSON");
            line.push(b'\n');
            Bytes::from(line)
        };
        tokio::spawn(async move {
            for object in &initial {
                if tx.send(render("ADDED", object)).is_err() {
                    return;
                }
            }
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut next = {
                let state = fake.lock();
                state.log.partition_point(|c| c.rv <= from)
            };
            loop {
                latest.borrow_and_update();
                let lines: Vec<Bytes> = {
                    let state = fake.lock();
                    let changes = &state.log[next..];
                    next = state.log.len();
                    changes
                        .iter()
                        .filter(|c| c.kind == rt.kind)
                        .filter(|c| namespace.as_ref().is_none_or(|ns| *ns == c.namespace))
                        .filter_map(|c| {
                            let now = selector.matches(&c.object);
                            let before = c.previous.as_ref().map(|p| selector.matches(p));
                            let event = match (c.event, before, now) {
                                ("DELETED", _, true) => "DELETED",
                                ("ADDED", _, true) => "ADDED",
                                ("MODIFIED", Some(true), true) => "MODIFIED",
                                ("MODIFIED", Some(false), true) => "ADDED",
                                ("MODIFIED", Some(true), false) => "DELETED",
                                _ => return None,
                            };
                            Some(render(event, &c.object))
                        })
                        .collect()
                };
                for line in lines {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                let expired = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = latest.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = expired => return,
                }
            }
        });
        rx
    }
}

/// What one watch serves.
struct WatchSpec {
    rt: &'static ResourceType,
    namespace: Option<String>,
    selector: Selector,
    metadata_only: bool,
    /// Sent as ADDED first (a watch without a resourceVersion).
    initial: Vec<Value>,
    /// Changes after this resourceVersion follow.
    from: u64,
    timeout: Option<Duration>,
}

enum Reply {
    Json((StatusCode, Value)),
    Watch(mpsc::UnboundedReceiver<Bytes>),
}

fn unknown(state: &mut State, request: &RecordedRequest, why: &str) -> ApiError {
    let line = format!("{request} ({why})");
    eprintln!("FAKE API SERVER: unknown request: {line}");
    state.unknown.push(line);
    error(
        404,
        "NotFound",
        format!("the fake API server does not serve this: {why}"),
    )
}

struct Route {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// The APIResourceList of `/apis/<group>/<version>` (or `/api/v1`), without `uninstalled`.
fn discovery(path: &str, uninstalled: &BTreeSet<&'static str>) -> Option<Value> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version) = match segments.as_slice() {
        ["api", version] => ("", *version),
        ["apis", group, version] => (*group, *version),
        _ => return None,
    };
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version && !uninstalled.contains(r.kind))
        .map(|r| {
            json!({
                "name": r.plural,
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            })
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn parse_path(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, plural, ..]
            if resource_by_path(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (Some(namespace.to_string()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    let rt = resource_by_path(group, version, plural)?;
    if namespace.is_some() && !rt.namespaced {
        return None;
    }
    Some(Route {
        rt,
        namespace,
        name,
        subresource,
    })
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A label selector (the equality- and set-based forms).
#[derive(Debug, Clone, Default)]
struct Selector(Vec<Requirement>);

#[derive(Debug, Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, String> {
        // Split on commas outside parentheses.
        let mut parts = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        let set = |values: &str| -> Result<Vec<String>, String> {
            let inner = values
                .trim()
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| format!("bad set {values:?}"))?;
            Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
        };
        let mut requirements = Vec::new();
        for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(v)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set(v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Requirement::Exists(part.into())
            } else {
                return Err(format!("unsupported label selector {part:?}"));
            };
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v),
            Requirement::NotEquals(k, v) => label(k) != Some(v),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        })
    }
}

fn metadata_only(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

/// The PartialObjectMetadata form of an object.
fn partial(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object["metadata"].clone(),
    })
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let timestamp = k8s_openapi::jiff::Timestamp::from_second(secs.try_into().unwrap_or_default())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    timestamp.to_string()
}

/// Everything but metadata and status: what `metadata.generation` tracks.
fn spec_part(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        for key in ["metadata", "status", "apiVersion", "kind"] {
            map.remove(key);
        }
    }
    copy
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// RFC 6902 JSON patch (add, remove, replace, test).
fn json_patch(target: &mut Value, operations: &Value) -> Result<(), String> {
    let operations = operations.as_array().ok_or("a JSON patch is an array")?;
    for operation in operations {
        let op = operation["op"].as_str().ok_or("op missing")?;
        let path = operation["path"].as_str().ok_or("path missing")?;
        let (parent, last) = path
            .rsplit_once('/')
            .ok_or_else(|| format!("bad path {path}"))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        match op {
            "test" => {
                if target.pointer(path) != Some(&operation["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            "remove" => {
                let container = target
                    .pointer_mut(parent)
                    .ok_or_else(|| format!("no {parent}"))?;
                match container {
                    Value::Object(map) => {
                        map.remove(&last).ok_or_else(|| format!("no {path}"))?;
                    }
                    Value::Array(items) => {
                        let index: usize = last.parse().map_err(|_| format!("bad index {path}"))?;
                        if index >= items.len() {
                            return Err(format!("no {path}"));
                        }
                        items.remove(index);
                    }
                    _ => return Err(format!("no {path}")),
                }
            }
            "add" | "replace" => {
                let value = operation["value"].clone();
                let container = target
                    .pointer_mut(parent)
                    .ok_or_else(|| format!("no {parent}"))?;
                match container {
                    Value::Object(map) => {
                        if op == "replace" && !map.contains_key(&last) {
                            return Err(format!("no {path}"));
                        }
                        map.insert(last, value);
                    }
                    Value::Array(items) => {
                        if last == "-" && op == "add" {
                            items.push(value);
                        } else {
                            let index: usize =
                                last.parse().map_err(|_| format!("bad index {path}"))?;
                            if op == "add" && index <= items.len() {
                                items.insert(index, value);
                            } else if op == "replace" && index < items.len() {
                                items[index] = value;
                            } else {
                                return Err(format!("bad index {path}"));
                            }
                        }
                    }
                    _ => return Err(format!("no {parent}")),
                }
            }
            other => return Err(format!("unsupported JSON patch op {other}")),
        }
    }
    Ok(())
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The leaf fields of an applied configuration, as JSON pointers; lists are atomic leaves.
/// Identity fields (apiVersion, kind, metadata name/namespace/resourceVersion) are not owned.
fn leaf_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = format!("{prefix}/{}", escape(key));
                if matches!(
                    path.as_str(),
                    "/apiVersion"
                        | "/kind"
                        | "/metadata/name"
                        | "/metadata/namespace"
                        | "/metadata/resourceVersion"
                        | "/metadata/managedFields"
                ) {
                    continue;
                }
                leaf_paths(child, &path, out);
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.to_string());
        }
        _ => {}
    }
}

/// Removes the field at a JSON pointer, if present.
fn remove_pointer(target: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(map)) = target.pointer_mut(parent) {
        map.remove(&last);
    }
}

/// Applied configuration over live object: maps merge key by key, anything else replaces.
fn apply_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(target), Value::Object(applied)) => {
            for (key, value) in applied {
                match target.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        apply_merge(existing, value);
                    }
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

fn resource_version(object: &Value) -> Option<&str> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
}

impl State {
    fn key(rt: &'static ResourceType, namespace: &str, name: &str) -> Key {
        Key {
            kind: rt.kind,
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn log(&mut self, key: &Key, event: &'static str, object: &Value, previous: Option<Value>) {
        let rv = self.rv;
        self.log.push(Change {
            rv,
            kind: key.kind,
            namespace: key.namespace.clone(),
            event,
            object: object.clone(),
            previous,
        });
    }

    /// Fills in what the API server sets on create and stores the object.
    fn create(
        &mut self,
        rt: &'static ResourceType,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(error(400, "BadRequest", "the body is not an object"));
        }
        if rt.namespaced && namespace.is_empty() {
            return Err(error(
                400,
                "BadRequest",
                format!("a {} needs a namespace", rt.kind),
            ));
        }
        let meta = object
            .as_object_mut()
            .expect("an object")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        let name = match meta["name"].as_str().filter(|n| !n.is_empty()) {
            Some(name) => name.to_string(),
            None => match meta["generateName"].as_str() {
                Some(prefix) => format!("{prefix}{:05x}", self.uid + 1),
                None => return Err(error(422, "Invalid", "metadata.name is required")),
            },
        };
        let key = Self::key(rt, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(error(
                409,
                "AlreadyExists",
                format!("{} {namespace}/{name} already exists", rt.kind),
            ));
        }
        self.uid += 1;
        let rv = self.next_rv();
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        if rt.namespaced {
            meta["namespace"] = json!(namespace);
        } else if let Some(map) = meta.as_object_mut() {
            map.remove("namespace");
        }
        meta["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", self.uid));
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["generation"] = json!(1);
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        if rt.kind == "Service" {
            let spec = &mut object["spec"];
            if !spec.is_object() {
                *spec = json!({});
            }
            if spec["clusterIP"].as_str().is_none_or(str::is_empty)
                && spec["type"].as_str() != Some("ExternalName")
            {
                self.cluster_ip += 1;
                let ip = format!(
                    "10.96.{}.{}",
                    self.cluster_ip / 250,
                    self.cluster_ip % 250 + 1
                );
                spec["clusterIP"] = json!(ip);
                spec["clusterIPs"] = json!([ip]);
            }
        }
        self.log(&key, "ADDED", &object, None);
        self.objects.insert(key, object.clone());
        Ok(object)
    }

    /// Stores a new version of an existing object: identity kept, generation and
    /// resourceVersion moved when something changed (a no-op write changes nothing).
    fn store(&mut self, key: &Key, mut object: Value, bump_generation: bool) -> Value {
        let Some(old) = self.objects.get(key).cloned() else {
            return object;
        };
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            match old["metadata"].get(field) {
                Some(value) => object["metadata"][field] = value.clone(),
                None => {
                    if let Some(map) = object["metadata"].as_object_mut() {
                        map.remove(field);
                    }
                }
            }
        }
        object["apiVersion"] = old["apiVersion"].clone();
        object["kind"] = old["kind"].clone();
        object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if object == old {
            return old;
        }
        if bump_generation && spec_part(&object) != spec_part(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.log(key, "MODIFIED", &object, Some(old));
        self.objects.insert(key.clone(), object.clone());
        object
    }

    fn remove(&mut self, key: &Key) -> Result<Value, ApiError> {
        let Some(mut object) = self.objects.remove(key) else {
            return Err(error(
                404,
                "NotFound",
                format!("{} {}/{} not found", key.kind, key.namespace, key.name),
            ));
        };
        self.managers.remove(key);
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.log(key, "DELETED", &object, None);
        Ok(object)
    }

    fn existing(&self, key: &Key) -> Result<Value, ApiError> {
        self.objects.get(key).cloned().ok_or_else(|| {
            error(
                404,
                "NotFound",
                format!("{} {}/{} not found", key.kind, key.namespace, key.name),
            )
        })
    }

    /// The write's `metadata.resourceVersion`, when it has one, must be the current one.
    fn precondition(current: &Value, write: &Value) -> Result<(), ApiError> {
        match (resource_version(write), resource_version(current)) {
            (Some(wanted), Some(current)) if wanted != current => Err(error(
                409,
                "Conflict",
                format!(
                    "the object has been modified; please apply your changes to the latest version and try again (resourceVersion {wanted} != {current})"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn record_manager(&mut self, key: &Key, manager: Option<&String>) {
        if let Some(manager) = manager {
            self.managers
                .entry(key.clone())
                .or_default()
                .entry(manager.clone())
                .or_default();
        }
    }

    fn handle(
        &mut self,
        route: &Route,
        request: &RecordedRequest,
        fake: &FakeApi,
    ) -> Result<Reply, ApiError> {
        let rt = route.rt;
        let namespace = route.namespace.clone().unwrap_or_default();
        let meta_only = metadata_only(request.accept.as_deref());
        let ok = |value: Value| Ok(Reply::Json((StatusCode::OK, value)));
        if route.subresource.as_deref().is_some_and(|s| s != "status") {
            return Err(unknown(self, request, "unsupported subresource"));
        }
        let status_only = route.subresource.is_some();
        match (&request.method, &route.name) {
            (&Method::GET, None) => {
                if request.query.contains_key("fieldSelector") {
                    return Err(unknown(self, request, "fieldSelector is not supported"));
                }
                let selector = match request.query.get("labelSelector") {
                    Some(text) => match Selector::parse(text) {
                        Ok(selector) => selector,
                        Err(why) => return Err(unknown(self, request, &why)),
                    },
                    None => Selector::default(),
                };
                let scope = route.namespace.clone();
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(k, _)| k.kind == rt.kind)
                    .filter(|(k, _)| scope.as_ref().is_none_or(|ns| *ns == k.namespace))
                    .filter(|(_, o)| selector.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect();
                if request.watch {
                    let since = request
                        .query
                        .get("resourceVersion")
                        .and_then(|v| v.parse::<u64>().ok())
                        .filter(|v| *v > 0);
                    let (initial, from) = match since {
                        Some(rv) => (Vec::new(), rv),
                        None => (items, self.rv),
                    };
                    let timeout = request
                        .query
                        .get("timeoutSeconds")
                        .and_then(|t| t.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let rx = fake.spawn_watch(WatchSpec {
                        rt,
                        namespace: scope,
                        selector,
                        metadata_only: meta_only,
                        initial,
                        from,
                        timeout,
                    });
                    return Ok(Reply::Watch(rx));
                }
                let (api_version, kind, items) = if meta_only {
                    (
                        "meta.k8s.io/v1".to_string(),
                        "PartialObjectMetadataList".to_string(),
                        items.iter().map(partial).collect(),
                    )
                } else {
                    (rt.api_version(), format!("{}List", rt.kind), items)
                };
                ok(json!({
                    "apiVersion": api_version,
                    "kind": kind,
                    "metadata": {"resourceVersion": self.rv.to_string()},
                    "items": items,
                }))
            }
            (&Method::GET, Some(name)) => {
                let object = self.existing(&Self::key(rt, &namespace, name))?;
                ok(if meta_only { partial(&object) } else { object })
            }
            (&Method::POST, None) if !status_only => {
                let created = self.create(rt, &namespace, request.body.clone())?;
                let key = Self::key(
                    rt,
                    &namespace,
                    created["metadata"]["name"].as_str().unwrap_or_default(),
                );
                self.record_manager(&key, request.query.get("fieldManager"));
                Ok(Reply::Json((StatusCode::CREATED, created)))
            }
            (&Method::PUT, Some(name)) => {
                let key = Self::key(rt, &namespace, name);
                let current = self.existing(&key)?;
                Self::precondition(&current, &request.body)?;
                let mut object = current.clone();
                if status_only {
                    object["status"] = request.body["status"].clone();
                } else {
                    object = request.body.clone();
                    match current.get("status") {
                        Some(status) => object["status"] = status.clone(),
                        None => {
                            if let Some(map) = object.as_object_mut() {
                                map.remove("status");
                            }
                        }
                    }
                }
                self.record_manager(&key, request.query.get("fieldManager"));
                ok(self.store(&key, object, !status_only))
            }
            (&Method::PATCH, Some(name)) => {
                let key = Self::key(rt, &namespace, name);
                let content_type = request.content_type.as_deref().unwrap_or_default();
                if content_type.starts_with("application/apply-patch") {
                    return self.apply(rt, &key, request, status_only);
                }
                let current = self.existing(&key)?;
                let mut object = current.clone();
                if content_type.starts_with("application/merge-patch+json")
                    || content_type.starts_with("application/strategic-merge-patch+json")
                {
                    Self::precondition(&current, &request.body)?;
                    if status_only {
                        if let Some(status) = request.body.get("status") {
                            merge_patch(&mut object["status"], status);
                        }
                    } else {
                        let mut patch = request.body.clone();
                        if let Some(map) = patch.as_object_mut() {
                            map.remove("status");
                        }
                        merge_patch(&mut object, &patch);
                    }
                } else if content_type.starts_with("application/json-patch+json") {
                    json_patch(&mut object, &request.body)
                        .map_err(|why| error(422, "Invalid", why))?;
                    if status_only {
                        let status = object["status"].clone();
                        object = current.clone();
                        object["status"] = status;
                    } else {
                        object["status"] = current["status"].clone();
                        if object["status"].is_null()
                            && let Some(map) = object.as_object_mut()
                        {
                            map.remove("status");
                        }
                    }
                } else {
                    return Err(unknown(self, request, "unsupported patch content type"));
                }
                self.record_manager(&key, request.query.get("fieldManager"));
                ok(self.store(&key, object, !status_only))
            }
            (&Method::DELETE, Some(name)) if !status_only => {
                let key = Self::key(rt, &namespace, name);
                ok(self.remove(&key)?)
            }
            _ => Err(unknown(self, request, "unsupported verb")),
        }
    }

    /// Server-side apply.
    fn apply(
        &mut self,
        rt: &'static ResourceType,
        key: &Key,
        request: &RecordedRequest,
        status_only: bool,
    ) -> Result<Reply, ApiError> {
        let Some(manager) = request.field_manager().map(str::to_string) else {
            return Err(error(422, "Invalid", "fieldManager is required for apply"));
        };
        let force = request.query.get("force").is_some_and(|f| f == "true");
        let applied = &request.body;
        if !applied.is_object() {
            return Err(error(
                400,
                "BadRequest",
                "the applied configuration is not an object",
            ));
        }
        if applied["apiVersion"].as_str() != Some(&rt.api_version())
            || applied["kind"].as_str() != Some(rt.kind)
        {
            return Err(error(
                400,
                "BadRequest",
                format!(
                    "apply needs apiVersion {} and kind {} in the body",
                    rt.api_version(),
                    rt.kind
                ),
            ));
        }
        if applied["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != key.name)
        {
            return Err(error(
                400,
                "BadRequest",
                "metadata.name differs from the URL",
            ));
        }
        let applied = if status_only {
            json!({"status": applied["status"].clone()})
        } else {
            let mut copy = applied.clone();
            if let Some(map) = copy.as_object_mut() {
                map.remove("status");
            }
            copy
        };
        let mut paths = BTreeSet::new();
        leaf_paths(&applied, "", &mut paths);
        let Some(current) = self.objects.get(key).cloned() else {
            if status_only {
                return Err(error(
                    404,
                    "NotFound",
                    "apply to the status of a missing object",
                ));
            }
            let created = self.create(rt, &key.namespace, applied.clone())?;
            self.managers
                .entry(key.clone())
                .or_default()
                .insert(manager, paths);
            return Ok(Reply::Json((StatusCode::CREATED, created)));
        };
        let owners = self.managers.entry(key.clone()).or_default();
        if !force {
            for (other, owned) in owners.iter().filter(|(m, _)| **m != manager) {
                for path in owned.intersection(&paths) {
                    if current.pointer(path) != applied.pointer(path) {
                        return Err(error(
                            409,
                            "Conflict",
                            format!(
                                "Apply failed with 1 conflict: conflict with \"{other}\": {path}"
                            ),
                        ));
                    }
                }
            }
        }
        let mut object = current.clone();
        let previous = owners.get(&manager).cloned().unwrap_or_default();
        for released in previous.difference(&paths) {
            let still_owned = owners
                .iter()
                .any(|(m, owned)| *m != manager && owned.contains(released));
            if !still_owned {
                remove_pointer(&mut object, released);
            }
        }
        apply_merge(&mut object, &applied);
        if force {
            // Forced fields move to this manager.
            for (other, owned) in owners.iter_mut() {
                if *other != manager {
                    owned.retain(|p| !paths.contains(p));
                }
            }
        }
        owners.insert(manager, paths);
        Ok(Reply::Json((
            StatusCode::OK,
            self.store(key, object, !status_only),
        )))
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response<FakeBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(FakeBody::Full(Some(Bytes::from(
            serde_json::to_vec(value).expect("JSON"),
        ))))
        .expect("a valid response")
}

/// A response body: a whole JSON document, or a watch's lines as they come.
pub enum FakeBody {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl http_body::Body for FakeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            FakeBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Stream(rx) => rx
                .poll_recv(cx)
                .map(|line| line.map(|b| Ok(Frame::data(b)))),
        }
    }
}

impl tower::Service<Request<Body>> for FakeApi {
    type Response = Response<FakeBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<FakeBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let fake = self.clone();
        Box::pin(async move { Ok(fake.serve(request).await) })
    }
}
