//! `GatewayParameters` (portcullis.dev/v1alpha1): how the proxies of a Gateway are deployed.
//!
//! A GatewayClass's `spec.parametersRef` names the class defaults; a Gateway's
//! `spec.infrastructure.parametersRef` names a per-Gateway override, merged over the class
//! defaults field by field ([`GatewayParametersSpec::merged_over`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "portcullis.dev";
pub const KIND: &str = "GatewayParameters";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "GatewayParameters",
    plural = "gatewayparameters",
    shortname = "gwparams",
    namespaced,
    cel,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service.type"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParametersSpec {
    /// Proxy pods per Gateway. Leave unset to let `kubectl scale` or a HorizontalPodAutoscaler
    /// own the replica count; the operator then never writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// Resources of the proxy container. Whole-CPU limits equal to requests (Guaranteed QoS)
    /// suit a thread-per-core proxy best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The Service in front of the proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceParameters>,

    /// Labels, annotations and scheduling of the proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodParameters>,

    /// Proxy image, replacing the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Settings of the proxy process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyParameters>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.externalTrafficPolicy) || (has(self.type) && self.type != 'ClusterIP')")
        .message("externalTrafficPolicy needs a LoadBalancer or NodePort Service")
)]
pub struct ServiceParameters {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    #[serde(rename = "ClusterIP")]
    ClusterIp,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalTrafficPolicy {
    Cluster,
    Local,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyParameters {
    /// Worker cores per proxy pod; defaults to the CPUs the pod may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub cores: Option<i32>,
    /// Seconds open requests get to finish when a proxy pod stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// One JSON line per request on the proxy's stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl GatewayParametersSpec {
    /// `self` (a Gateway's override) over `defaults` (its class's): every field set here wins,
    /// maps are merged key by key with this side winning.
    pub fn merged_over(&self, defaults: &GatewayParametersSpec) -> GatewayParametersSpec {
        GatewayParametersSpec {
            replicas: self.replicas.or(defaults.replicas),
            resources: self
                .resources
                .clone()
                .or_else(|| defaults.resources.clone()),
            service: merge_option(&self.service, &defaults.service, |o, d| ServiceParameters {
                type_: o.type_.or(d.type_),
                annotations: merge_maps(&o.annotations, &d.annotations),
                external_traffic_policy: o.external_traffic_policy.or(d.external_traffic_policy),
            }),
            pod: merge_option(&self.pod, &defaults.pod, |o, d| PodParameters {
                labels: merge_maps(&o.labels, &d.labels),
                annotations: merge_maps(&o.annotations, &d.annotations),
                node_selector: merge_maps(&o.node_selector, &d.node_selector),
                tolerations: o.tolerations.clone().or_else(|| d.tolerations.clone()),
                affinity: o.affinity.clone().or_else(|| d.affinity.clone()),
            }),
            image: self.image.clone().or_else(|| defaults.image.clone()),
            proxy: merge_option(&self.proxy, &defaults.proxy, |o, d| ProxyParameters {
                cores: o.cores.or(d.cores),
                drain_timeout_seconds: o.drain_timeout_seconds.or(d.drain_timeout_seconds),
                log_level: o.log_level.or(d.log_level),
                access_log: o.access_log.or(d.access_log),
            }),
        }
    }
}

fn merge_option<T: Clone>(
    over: &Option<T>,
    under: &Option<T>,
    merge: impl Fn(&T, &T) -> T,
) -> Option<T> {
    match (over, under) {
        (Some(o), Some(u)) => Some(merge(o, u)),
        (Some(o), None) => Some(o.clone()),
        (None, u) => u.clone(),
    }
}

fn merge_maps(
    over: &Option<BTreeMap<String, String>>,
    under: &Option<BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    match (over, under) {
        (None, None) => None,
        _ => {
            let mut merged = under.clone().unwrap_or_default();
            merged.extend(over.clone().unwrap_or_default());
            Some(merged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_carries_schema_and_cel_rules() {
        let crd = serde_json::to_string(&GatewayParameters::crd()).unwrap();
        assert!(crd.contains("\"group\":\"portcullis.dev\""));
        assert!(crd.contains("x-kubernetes-validations"));
        assert!(crd.contains("externalTrafficPolicy needs a LoadBalancer or NodePort Service"));
        assert!(crd.contains("\"gwparams\""));
    }

    #[test]
    fn cel_rules_hold_client_side() {
        let ok = serde_json::json!({"type": "NodePort", "externalTrafficPolicy": "Local"});
        assert!(ServiceParameters::validate_cel(&ok, None).is_ok());
        let bad = serde_json::json!({"type": "ClusterIP", "externalTrafficPolicy": "Local"});
        assert!(ServiceParameters::validate_cel(&bad, None).is_err());
        let unset = serde_json::json!({"externalTrafficPolicy": "Local"});
        assert!(ServiceParameters::validate_cel(&unset, None).is_err());
    }

    #[test]
    fn overrides_merge_field_by_field() {
        let class: GatewayParametersSpec = serde_json::from_value(serde_json::json!({
            "replicas": 2,
            "image": "registry.example/portcullis-proxy:1",
            "service": {"type": "NodePort", "annotations": {"a": "class", "b": "class"}},
            "proxy": {"cores": 2, "logLevel": "info"},
        }))
        .unwrap();
        let gateway: GatewayParametersSpec = serde_json::from_value(serde_json::json!({
            "service": {"annotations": {"b": "gateway", "c": "gateway"}},
            "proxy": {"logLevel": "debug", "accessLog": true},
        }))
        .unwrap();
        let merged = gateway.merged_over(&class);
        assert_eq!(merged.replicas, Some(2));
        assert_eq!(
            merged.image.as_deref(),
            Some("registry.example/portcullis-proxy:1")
        );
        let service = merged.service.unwrap();
        assert_eq!(service.type_, Some(ServiceType::NodePort));
        let annotations = service.annotations.unwrap();
        assert_eq!(annotations["a"], "class");
        assert_eq!(annotations["b"], "gateway");
        assert_eq!(annotations["c"], "gateway");
        let proxy = merged.proxy.unwrap();
        assert_eq!(proxy.cores, Some(2));
        assert_eq!(proxy.log_level, Some(LogLevel::Debug));
        assert_eq!(proxy.access_log, Some(true));
        assert_eq!(GatewayParametersSpec::default().merged_over(&class), class);
    }
}
