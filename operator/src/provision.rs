//! What the operator creates for each Gateway of our class: a ServiceAccount, a Deployment of
//! proxy pods (containers `proxy` and `agent`), a Service, and once a config has been served the
//! Secret `<name>-last-good` that a new proxy pod starts from while the operator is away. Pure
//! rendering; the controller applies the result with server-side apply.
//!
//! Names follow GEP-1762: `<gateway>-<gatewayclass>` in the Gateway's namespace, made a valid
//! DNS-1035 label where it is not one already (see [`resource_name`]), labelled
//! `gateway.networking.k8s.io/gateway-name` (see [`label_value`]), owned by the Gateway so
//! deleting it deletes them. Routes, endpoints and certificates never appear in
//! the pod template (they travel over the config stream), so they never cause a rollout.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use kube::ResourceExt;
use portcullis_api::gateway_api::gateway::Gateway;
use portcullis_api::v1alpha1::GatewayParametersSpec;
use portcullis_api::v1alpha1::gateway_parameters::{LogLevel, ServiceType};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::compile::GatewayOutput;

pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
pub const GATEWAY_CLASS_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "portcullis";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "portcullis";
/// Audience of the projected token agents present to the config server.
pub const TOKEN_AUDIENCE: &str = "portcullis.dev/config";
/// ConfigMap (in each Gateway namespace) holding the config server's CA certificate.
pub const CA_CONFIGMAP: &str = "portcullis-ca";
pub const ADMIN_PORT: u16 = 19000;
/// Annotation on the last-good Secret: the content hash (hex) of the config it holds.
pub const CONTENT_HASH_ANNOTATION: &str = "portcullis.dev/content-hash";
/// Key of the last-good Secret holding the CompiledConfig JSON, gzipped.
pub const LAST_GOOD_KEY: &str = "config.json.gz";
/// Type of the last-good Secret.
pub const LAST_GOOD_SECRET_TYPE: &str = "portcullis.dev/last-good-config";
/// The API server refuses Secrets over 1 MiB; leave room for the metadata. The limit applies
/// to the compressed config.
pub const LAST_GOOD_MAX_BYTES: usize = 1000 * 1024;
const RUN_DIR: &str = "/var/run/portcullis";
const LAST_GOOD_DIR: &str = "/etc/portcullis/last-good";
const TOKEN_DIR: &str = "/var/run/secrets/portcullis";
/// Proxy pods run under a UID of their own per Gateway, in [PROXY_UID_BASE, PROXY_UID_BASE +
/// PROXY_UID_SPAN): the kernel charges io_uring rings and registered buffers to the user's
/// locked-memory budget (RLIMIT_MEMLOCK, 8 MiB on most nodes), summed over every process of that
/// UID on the node. One proxy needs about 240 KiB per executor, so with one shared UID a node
/// runs out after about a dozen small proxies and further ones cannot start.
const PROXY_UID_BASE: i64 = 100_000;
const PROXY_UID_SPAN: i64 = 2_000_000_000;
const DEFAULT_DRAIN_SECONDS: i32 = 30;
/// Seconds a terminating proxy keeps accepting (not ready, closing connections) so endpoint
/// removal reaches every node before its listeners close.
const DRAIN_DELAY_SECONDS: i32 = 5;

/// Operator-wide settings for what it provisions.
#[derive(Debug, Clone)]
pub struct ProvisionSettings {
    pub proxy_image: String,
    pub agent_image: String,
    pub image_pull_policy: String,
    /// How agents reach the config server, e.g. "https://portcullis.portcullis-system.svc:9443"
    /// or, once the controller knows its Service's ClusterIP, "https://10.96.0.20:9443".
    pub config_server: String,
    /// The DNS name in the config server's certificate, e.g. "portcullis.portcullis-system.svc".
    pub config_server_name: String,
    pub seccomp: Seccomp,
}

/// The proxy pods' seccomp profile. io_uring is denied by the runtimes' default profiles, so
/// the default is a Localhost profile that allows it (docs/seccomp.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    Localhost(String),
    RuntimeDefault,
    Unconfined,
}

/// The objects provisioned for one Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Provisioned {
    pub name: String,
    pub namespace: String,
    pub service_account: ServiceAccount,
    pub deployment: Deployment,
    /// None while the Gateway has no port to expose.
    pub service: Option<Service>,
}

/// Longest DNS-1035 label (Service names) and longest label value.
const MAX_LABEL: usize = 63;
/// Hex characters of the hash that marks a name or label value that had to be changed.
const HASH_LEN: usize = 8;

/// The first 8 hex characters of SHA-256 over `text`.
fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(HASH_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `name` is a DNS-1035 label (what a Service name must be): 1 to 63 lowercase
/// alphanumerics or '-', starting with a letter and ending with an alphanumeric.
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=MAX_LABEL).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Whether `value` is a valid label value: empty, or at most 63 alphanumerics, '-', '_' or
/// '.', beginning and ending with an alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= MAX_LABEL
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
}

/// The name of the ServiceAccount, Deployment and Service provisioned for Gateway `gateway`
/// of class `class`: `<gateway>-<class>` (GEP-1762) whenever that is a valid DNS-1035 label,
/// which every object kind we create accepts, so names of existing Gateways never change.
///
/// Gateway and GatewayClass names are DNS subdomains (dots, a leading digit, up to 253
/// characters), which a Service name may not be. Such a name is rewritten: lowercased,
/// every character other than [a-z0-9-] replaced by '-', prefixed with `gw-` when it does
/// not start with a letter, cut to 54 characters without a trailing '-', and always suffixed
/// with `-` and 8 hex characters of SHA-256 over the unmodified `<gateway>-<class>`. The
/// hash is added whenever the name had to change, not only when it was too long: the
/// rewrite maps distinct inputs onto one (`a.b`+`c` and `a-b`+`c` both give `a-b-c`), and
/// the hash of the original keeps them apart (an unchanged valid name could only equal a
/// rewritten one by ending in exactly that input's hash). For names that only had to be
/// shortened the result is what earlier versions produced.
pub fn resource_name(gateway: &str, class: &str) -> String {
    let full = format!("{gateway}-{class}");
    if is_dns1035_label(&full) {
        return full;
    }
    let mut sanitized: String = full
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    if !sanitized.starts_with(|c: char| c.is_ascii_lowercase()) {
        sanitized.insert_str(0, "gw-");
    }
    // ASCII only now, so any byte index is a char boundary; the prefix keeps its first
    // character, a letter.
    let keep = sanitized.len().min(MAX_LABEL - HASH_LEN - 1);
    let prefix = sanitized[..keep].trim_end_matches('-');
    format!("{prefix}-{}", short_hash(&full))
}

/// `value` as a label value: unchanged when it is one already (every Gateway name of up to
/// 63 characters), else its first characters that are valid in a label value (others
/// replaced by '-'), trimmed to begin and end with an alphanumeric and cut so that `-` and 8
/// hex characters of SHA-256 over the unmodified `value` fit in 63. The hash keeps distinct
/// long names distinct. It is the only way to derive a label value from a user-chosen name
/// here, so that selectors (the Deployment's and the Service's) and the labels they select
/// always agree; anything else that selects provisioned objects or proxy pods by
/// [`GATEWAY_NAME_LABEL`] must compare against `label_value(gateway_name)`, never the raw
/// name, and cannot read the Gateway name back from the label.
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_string();
    }
    let sanitized: String = value
        .chars()
        .map(|c| match c {
            c @ ('a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.') => c,
            _ => '-',
        })
        .collect();
    let trimmed = sanitized.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let keep = trimmed.len().min(MAX_LABEL - HASH_LEN - 1);
    let prefix = trimmed[..keep].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = short_hash(value);
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The Secret holding the last config a proxy pod of the Gateway served.
pub fn last_good_secret_name(name: &str) -> String {
    format!("{name}-last-good")
}

/// The last-good Secret for `provisioned`'s Gateway holding `gzipped` (a gzipped
/// CompiledConfig) whose content hash is `hash_hex`. It carries the same labels and owner as the other objects, so it
/// goes away with the Gateway.
pub fn last_good_secret(provisioned: &Provisioned, gzipped: Vec<u8>, hash_hex: &str) -> Secret {
    let mut metadata = provisioned.service_account.metadata.clone();
    metadata.name = Some(last_good_secret_name(&provisioned.name));
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONTENT_HASH_ANNOTATION.into(), hash_hex.into());
    Secret {
        metadata,
        type_: Some(LAST_GOOD_SECRET_TYPE.into()),
        data: Some([(LAST_GOOD_KEY.to_string(), ByteString(gzipped))].into()),
        ..Secret::default()
    }
}

/// Renders the objects for `gateway`.
pub fn render(
    gateway: &Gateway,
    output: &GatewayOutput,
    settings: &ProvisionSettings,
) -> Result<Provisioned> {
    let gateway_name = gateway.name_any();
    let namespace = gateway
        .namespace()
        .context("the Gateway has no namespace")?;
    let uid = gateway.uid().context("the Gateway has no uid")?;
    let class = &gateway.spec.gateway_class_name;
    let name = resource_name(&gateway_name, class);
    let params = &output.parameters;
    let infrastructure = gateway.spec.infrastructure.clone().unwrap_or_default();

    let selector: BTreeMap<String, String> = [
        (GATEWAY_NAME_LABEL.to_string(), label_value(&gateway_name)),
        ("app.kubernetes.io/instance".to_string(), label_value(&name)),
    ]
    .into();
    // Infrastructure labels first, so ours win on a clash; gateway.networking.k8s.io keys
    // are reserved for the labels this controller sets.
    let mut labels: BTreeMap<String, String> = infrastructure
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("gateway.networking.k8s.io/"))
        .collect();
    labels.extend(selector.clone());
    labels.insert(GATEWAY_CLASS_LABEL.into(), label_value(class));
    labels.insert("app.kubernetes.io/name".into(), "portcullis-proxy".into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let annotations: BTreeMap<String, String> =
        infrastructure.annotations.clone().unwrap_or_default();

    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": gateway_name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let metadata = |extra_annotations: &BTreeMap<String, String>| {
        let mut all = annotations.clone();
        all.extend(extra_annotations.clone());
        json!({
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": all,
            "ownerReferences": owner,
        })
    };

    let service_account: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(&BTreeMap::new()),
        "automountServiceAccountToken": false,
    }))
    .context("rendering the ServiceAccount")?;

    let ports = &output.service_ports;
    let deployment = deployment(
        &name,
        &format!("{namespace}/{gateway_name}"),
        metadata(&BTreeMap::new()),
        &selector,
        &labels,
        &annotations,
        params,
        settings,
    )?;

    let service_params = params.service.clone().unwrap_or_default();
    let service = if ports.is_empty() {
        None
    } else {
        let mut spec = json!({
            "type": match service_params.type_.unwrap_or_default() {
                ServiceType::LoadBalancer => "LoadBalancer",
                ServiceType::NodePort => "NodePort",
                ServiceType::ClusterIp => "ClusterIP",
            },
            "selector": selector,
            "ports": ports.iter().map(|p| json!({
                "name": p.name(),
                "port": p.port,
                "targetPort": p.port,
                "protocol": p.protocol(),
            })).collect::<Vec<_>>(),
        });
        if !output.static_addresses.is_empty() {
            spec["externalIPs"] = json!(output.static_addresses);
        }
        if let Some(policy) = service_params.external_traffic_policy {
            spec["externalTrafficPolicy"] =
                serde_json::to_value(policy).context("externalTrafficPolicy")?;
        }
        Some(
            serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata(&service_params.annotations.clone().unwrap_or_default()),
                "spec": spec,
            }))
            .context("rendering the Service")?,
        )
    };

    Ok(Provisioned {
        name,
        namespace,
        service_account,
        deployment,
        service,
    })
}

/// The UID (and GID) the proxy pods of the Gateway `namespace/name` run under; see
/// PROXY_UID_BASE.
pub fn proxy_uid(gateway: &str) -> i64 {
    let digest = Sha256::digest(gateway.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let offset = u64::from_be_bytes(head) % PROXY_UID_SPAN.unsigned_abs();
    PROXY_UID_BASE + offset.cast_signed()
}

#[allow(clippy::too_many_arguments)]
fn deployment(
    name: &str,
    gateway: &str,
    metadata: Value,
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    params: &GatewayParametersSpec,
    settings: &ProvisionSettings,
) -> Result<Deployment> {
    let pod = params.pod.clone().unwrap_or_default();
    let proxy = params.proxy.clone().unwrap_or_default();
    let mut pod_labels = pod.labels.clone().unwrap_or_default();
    pod_labels.extend(labels.clone());
    let mut pod_annotations = annotations.clone();
    pod_annotations.extend(pod.annotations.clone().unwrap_or_default());
    let drain = proxy.drain_timeout_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS);
    let uid = proxy_uid(gateway);

    let mut proxy_args = vec![
        format!("--control-socket={RUN_DIR}/control.sock"),
        format!("--admin-address=0.0.0.0:{ADMIN_PORT}"),
        "--bind-address=0.0.0.0".to_string(),
        format!("--drain-timeout={drain}"),
        format!("--drain-delay={DRAIN_DELAY_SECONDS}"),
        format!(
            "--log-level={}",
            match proxy.log_level.unwrap_or(LogLevel::Info) {
                LogLevel::Error => "error",
                LogLevel::Warn => "warn",
                LogLevel::Info => "info",
                LogLevel::Debug => "debug",
            }
        ),
    ];
    if let Some(cores) = proxy.cores {
        proxy_args.push(format!("--cores={cores}"));
    }
    if proxy.access_log == Some(true) {
        proxy_args.push("--access-log".into());
    }
    let container_security = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
    });
    // io_uring is denied by the runtimes' default profiles (docs/seccomp.md).
    let mut proxy_security = container_security.clone();
    proxy_security["seccompProfile"] = match &settings.seccomp {
        Seccomp::Localhost(profile) => json!({"type": "Localhost", "localhostProfile": profile}),
        Seccomp::RuntimeDefault => json!({"type": "RuntimeDefault"}),
        Seccomp::Unconfined => json!({"type": "Unconfined"}),
    };
    // Listener ports are left out on purpose: they are informational in a pod, and listing
    // them would roll every proxy pod whenever a listener is added or moved; the proxy binds
    // whatever its config says without a restart.
    let container_ports =
        vec![json!({"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"})];
    let mut proxy_container = json!({
        "name": "proxy",
        "image": params.image.clone().unwrap_or_else(|| settings.proxy_image.clone()),
        "imagePullPolicy": settings.image_pull_policy,
        "args": proxy_args,
        "ports": container_ports,
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": ADMIN_PORT},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": ADMIN_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": proxy_security,
        "volumeMounts": [{"name": "run", "mountPath": RUN_DIR}],
    });
    if let Some(resources) = &params.resources {
        proxy_container["resources"] = serde_json::to_value(resources).context("resources")?;
    }
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let agent_container = json!({
        "name": "agent",
        "image": settings.agent_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "agent",
            format!("--config-server={}", settings.config_server),
            format!("--config-server-name={}", settings.config_server_name),
            format!("--gateway={gateway}"),
            format!("--token-file={TOKEN_DIR}/token"),
            format!("--ca-file={TOKEN_DIR}/ca.crt"),
            format!("--control-socket={RUN_DIR}/control.sock"),
            format!("--state-dir={RUN_DIR}/state"),
            format!("--bootstrap-file={LAST_GOOD_DIR}/{LAST_GOOD_KEY}"),
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": field("metadata.name")["valueFrom"]},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")["valueFrom"]},
            {"name": "POD_UID", "valueFrom": field("metadata.uid")["valueFrom"]},
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": container_security,
        "volumeMounts": [
            {"name": "run", "mountPath": RUN_DIR},
            {"name": "config-credentials", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "last-good", "mountPath": LAST_GOOD_DIR, "readOnly": true},
        ],
    });
    let mut pod_spec = json!({
        "serviceAccountName": name,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": drain + DRAIN_DELAY_SECONDS + 10,
        "enableServiceLinks": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            // The agent runs under the runtime's profile; the proxy container overrides it.
            "seccompProfile": {"type": "RuntimeDefault"},
            // Listener ports below 1024 without NET_BIND_SERVICE.
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        },
        "containers": [proxy_container, agent_container],
        "volumes": [
            {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "config-credentials", "projected": {"sources": [
                {"serviceAccountToken": {"audience": TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token"}},
                {"configMap": {"name": CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            ]}},
            // Optional: absent until a config has been served once.
            {"name": "last-good", "secret": {
                "secretName": last_good_secret_name(name),
                "optional": true,
                "defaultMode": 0o440,
            }},
        ],
    });
    if let Some(selector) = &pod.node_selector {
        pod_spec["nodeSelector"] = json!(selector);
    }
    if let Some(tolerations) = &pod.tolerations {
        pod_spec["tolerations"] = serde_json::to_value(tolerations).context("tolerations")?;
    }
    if let Some(affinity) = &pod.affinity {
        pod_spec["affinity"] = serde_json::to_value(affinity).context("affinity")?;
    }
    let mut spec = json!({
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": pod_labels, "annotations": pod_annotations},
            "spec": pod_spec,
        },
    });
    // Unset replicas are never written, so `kubectl scale` or an HPA own the count.
    if let Some(replicas) = params.replicas {
        spec["replicas"] = json!(replicas);
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": spec,
    }))
    .context("rendering the Deployment")
}

#[cfg(test)]
mod tests;
