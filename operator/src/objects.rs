//! Reading Kubernetes objects from YAML into the compiler's [`Input`]: multi-document files, or
//! directories of them. Used by standalone mode, `portcullis check`, and the compiler's
//! fixture tests.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::compile::Input;

/// Kinds the compiler reads; anything else in a file is ignored (and listed by `ignored`).
const KINDS: &[(&str, &str)] = &[
    ("gateway.networking.k8s.io", "GatewayClass"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "ListenerSet"),
    ("gateway.networking.k8s.io", "HTTPRoute"),
    ("gateway.networking.k8s.io", "GRPCRoute"),
    ("gateway.networking.k8s.io", "TLSRoute"),
    ("gateway.networking.k8s.io", "TCPRoute"),
    ("gateway.networking.k8s.io", "UDPRoute"),
    ("gateway.networking.k8s.io", "ReferenceGrant"),
    ("gateway.networking.k8s.io", "BackendTLSPolicy"),
    ("portcullis.dev", "GatewayParameters"),
    ("", "Namespace"),
    ("", "Service"),
    ("", "Secret"),
    ("", "ConfigMap"),
    ("discovery.k8s.io", "EndpointSlice"),
];

/// Objects loaded from files, plus what was skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    pub input: Input,
    /// "kind name (file)" of documents of kinds the compiler does not read.
    pub ignored: Vec<String>,
}

/// Loads every `*.yaml`/`*.yml` file under `paths` (files or directories, not recursive into
/// hidden entries), in a stable order.
pub fn load_paths(paths: &[PathBuf]) -> Result<Loaded> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    if files.is_empty() {
        bail!("no YAML files found in {}", display_paths(paths));
    }
    let mut loaded = Loaded::default();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        load_str(&text, &file.display().to_string(), &mut loaded)?;
    }
    Ok(loaded)
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if metadata.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() {
                collect_files(&entry, files)?;
            } else if is_yaml(&entry) {
                files.push(entry);
            }
        }
    } else {
        files.push(path.to_path_buf());
    }
    Ok(())
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Parses a multi-document YAML text into `loaded`. `source` names the text in errors.
pub fn load_str(text: &str, source: &str, loaded: &mut Loaded) -> Result<()> {
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| anyhow::anyhow!("{source}: invalid YAML: {e}"))?;
    for (i, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        if document.get("kind").and_then(|k| k.as_str()) == Some("List") {
            for item in document
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default()
            {
                add(
                    item,
                    &format!("{source} (document {}, List item)", i + 1),
                    loaded,
                )?;
            }
        } else {
            add(document, &format!("{source} (document {})", i + 1), loaded)?;
        }
    }
    Ok(())
}

fn add(document: serde_json::Value, source: &str, loaded: &mut Loaded) -> Result<()> {
    let kind = document
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let api_version = document
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let name = document
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>")
        .to_string();
    if kind.is_empty() || api_version.is_empty() {
        bail!("{source}: a document without kind or apiVersion");
    }
    if !KINDS.contains(&(group, kind.as_str())) {
        loaded.ignored.push(format!("{kind} {name} ({source})"));
        return Ok(());
    }
    let input = &mut loaded.input;
    match kind.as_str() {
        "GatewayClass" => input
            .gateway_classes
            .push(parse(document, &kind, &name, source)?),
        "Gateway" => input.gateways.push(parse(document, &kind, &name, source)?),
        "ListenerSet" => input
            .listener_sets
            .push(parse(document, &kind, &name, source)?),
        "HTTPRoute" => input
            .http_routes
            .push(parse(document, &kind, &name, source)?),
        "GRPCRoute" => input
            .grpc_routes
            .push(parse(document, &kind, &name, source)?),
        "TLSRoute" => input
            .tls_routes
            .push(parse(document, &kind, &name, source)?),
        "TCPRoute" => input
            .tcp_routes
            .push(parse(document, &kind, &name, source)?),
        "UDPRoute" => input
            .udp_routes
            .push(parse(document, &kind, &name, source)?),
        "ReferenceGrant" => input
            .reference_grants
            .push(parse(document, &kind, &name, source)?),
        "GatewayParameters" => input
            .gateway_parameters
            .push(parse(document, &kind, &name, source)?),
        "Namespace" => input
            .namespaces
            .push(parse(document, &kind, &name, source)?),
        "Service" => input.services.push(parse(document, &kind, &name, source)?),
        "Secret" => input.secrets.push(parse(document, &kind, &name, source)?),
        "ConfigMap" => input
            .config_maps
            .push(parse(document, &kind, &name, source)?),
        "BackendTLSPolicy" => input
            .backend_tls_policies
            .push(parse(document, &kind, &name, source)?),
        "EndpointSlice" => input
            .endpoint_slices
            .push(parse(document, &kind, &name, source)?),
        _ => loaded.ignored.push(format!("{kind} {name} ({source})")),
    }
    Ok(())
}

/// Deserializes one object, defaulting a missing namespace to "default" as `kubectl apply`
/// does for namespaced objects.
fn parse<T: DeserializeOwned>(
    mut document: serde_json::Value,
    kind: &str,
    name: &str,
    source: &str,
) -> Result<T> {
    let cluster_scoped = matches!(kind, "GatewayClass" | "Namespace");
    if !cluster_scoped
        && let Some(metadata) = document.get_mut("metadata").and_then(|m| m.as_object_mut())
    {
        metadata
            .entry("namespace")
            .or_insert_with(|| serde_json::Value::String("default".into()));
    }
    serde_json::from_value(document)
        .with_context(|| format!("{source}: {kind} {name} does not match its schema"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_known_kinds_and_skips_others() {
        let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc}
spec: {parentRefs: [{name: gw}], rules: [{matches: [{method: {service: pkg.Svc}}]}]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: unrelated}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: app}
  spec: {ports: [{port: 80}]}
---
"#;
        let mut loaded = Loaded::default();
        load_str(text, "test.yaml", &mut loaded).unwrap();
        assert_eq!(loaded.input.gateway_classes.len(), 1);
        assert_eq!(loaded.input.gateways.len(), 1);
        assert_eq!(
            loaded.input.gateways[0].metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(loaded.input.services.len(), 1);
        assert_eq!(loaded.input.grpc_routes.len(), 1);
        assert_eq!(
            loaded.input.grpc_routes[0].metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(loaded.ignored.len(), 1);
        assert!(loaded.ignored[0].starts_with("PersistentVolumeClaim unrelated"));
    }

    #[test]
    fn schema_errors_name_the_object() {
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: broken}\nspec: {listeners: 3}\n";
        let error = load_str(text, "bad.yaml", &mut Loaded::default()).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("bad.yaml (document 1): Gateway broken"),
            "{message}"
        );
    }
}
