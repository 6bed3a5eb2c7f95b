//! BackendTLSPolicy: which Service ports the proxy reaches over TLS, how it authenticates
//! them, and each policy's status for every Gateway that routes to what it targets.
//!
//! A policy targets a Service, or one of its ports by name (`sectionName`). For a port, a
//! policy naming it takes precedence over one naming the whole Service; among policies with
//! the same target the oldest wins (then namespace/name) and the others are Conflicted. Only
//! HTTPRoute and GRPCRoute traffic uses the policy: TLSRoute, TCPRoute and UDPRoute forward
//! bytes unchanged.
//!
//! A policy without a usable CA certificate still claims its target, and traffic to it fails
//! with a 5xx instead of silently falling back to plaintext.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::ConfigMap;
use portcullis_api::config::{Backend, BackendTls, SubjectAltName};
use portcullis_api::gateway_api::backendtlspolicy::{
    BackendTlsPolicy, BackendTlsPolicyValidation, BackendTlsPolicyValidationSubjectAltNamesType,
};
use portcullis_api::validate::{is_absolute_uri, is_dns_name};

use super::ca_bundles::{self, CaRef};
use super::conditions::{Condition, Status, reasons, types};
use super::gateways::GatewayState;
use super::{Index, ObjectKey, backends, by_age, generation};

const CONFLICTED: &str = "Conflicted";
const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
/// The one `wellKnownCACertificates` value the API defines: the proxy's system trust store.
const WELL_KNOWN_SYSTEM: &str = "System";

/// What a policy targets: a Service, and optionally one of its ports by name.
pub type Target = (ObjectKey, Option<String>);

/// Every BackendTLSPolicy, evaluated once per compile.
#[derive(Debug, Default)]
pub struct Policies {
    evaluated: Vec<Evaluated>,
    /// The policy that takes precedence for each target (an index into `evaluated`).
    winners: HashMap<Target, usize>,
}

#[derive(Debug)]
struct Evaluated {
    key: ObjectKey,
    generation: i64,
    targets: Vec<Target>,
    /// The TLS settings, or why traffic to the targets must fail.
    tls: Result<BackendTls, String>,
    /// Accepted=False before conflicts are considered: reason and message.
    invalid: Option<(&'static str, String)>,
    /// ResolvedRefs=False: reason and message.
    unresolved: Option<(&'static str, String)>,
    /// Targets another policy took precedence on.
    lost: Vec<Target>,
}

impl Policies {
    pub fn new(
        policies: &[BackendTlsPolicy],
        config_maps: &HashMap<ObjectKey, &ConfigMap>,
    ) -> Self {
        let mut out = Policies::default();
        for policy in by_age(policies) {
            let mut evaluated = evaluate(policy, config_maps);
            let position = out.evaluated.len();
            for target in &evaluated.targets {
                match out.winners.get(target) {
                    Some(_) => evaluated.lost.push(target.clone()),
                    None => {
                        out.winners.insert(target.clone(), position);
                    }
                }
            }
            out.evaluated.push(evaluated);
        }
        out
    }

    /// The target whose policy governs `port_name` of `service`, if any: a policy naming the
    /// port wins over one naming the whole Service.
    pub fn target_for(&self, service: &ObjectKey, port_name: Option<&str>) -> Option<Target> {
        let by_port = port_name.map(|name| (service.clone(), Some(name.to_string())));
        by_port
            .into_iter()
            .chain([(service.clone(), None)])
            .find(|target| self.winners.contains_key(target))
    }

    /// Applies the governing policy of `target` to `backend`. Err: traffic must fail (the
    /// message says why, for the proxy's logs).
    pub fn secure(&self, mut backend: Backend, target: &Target) -> Result<Backend, String> {
        let Some(&winner) = self.winners.get(target) else {
            return Ok(backend);
        };
        let policy = &self.evaluated[winner];
        match &policy.tls {
            Ok(tls) => {
                backend.tls = Some(tls.clone());
                Ok(backend)
            }
            Err(why) => Err(format!("BackendTLSPolicy {}: {why}", policy.key)),
        }
    }

    /// Status of every policy with at least one ancestor: the Gateways (keys) whose routes
    /// reach each target.
    pub fn outputs(
        &self,
        ancestors_by_target: &HashMap<Target, BTreeSet<ObjectKey>>,
    ) -> BTreeMap<ObjectKey, PolicyOutput> {
        let mut out = BTreeMap::new();
        for policy in &self.evaluated {
            let gateways: BTreeSet<&ObjectKey> = policy
                .targets
                .iter()
                .filter_map(|t| ancestors_by_target.get(t))
                .flatten()
                .collect();
            if gateways.is_empty() {
                continue;
            }
            let conditions = policy.conditions();
            let ancestors = gateways
                .into_iter()
                .map(|gateway| PolicyAncestorOutput {
                    gateway: gateway.clone(),
                    conditions: conditions.clone(),
                })
                .collect();
            out.insert(policy.key.clone(), PolicyOutput { ancestors });
        }
        out
    }
}

impl Evaluated {
    fn conditions(&self) -> Vec<Condition> {
        let generation = self.generation;
        let accepted = match (&self.invalid, self.lost.first()) {
            (_, Some((service, section))) => Condition::new(
                types::ACCEPTED,
                Status::False,
                CONFLICTED,
                format!(
                    "an older BackendTLSPolicy already targets Service {service}{}",
                    section
                        .as_ref()
                        .map(|s| format!(" port {s}"))
                        .unwrap_or_default()
                ),
                generation,
            ),
            (Some((reason, message)), None) => Condition::new(
                types::ACCEPTED,
                Status::False,
                reason,
                message.clone(),
                generation,
            ),
            (None, None) => Condition::new(
                types::ACCEPTED,
                Status::True,
                reasons::ACCEPTED,
                "policy is accepted",
                generation,
            ),
        };
        let resolved = match &self.unresolved {
            Some((reason, message)) => Condition::new(
                types::RESOLVED_REFS,
                Status::False,
                reason,
                message.clone(),
                generation,
            ),
            None => Condition::new(
                types::RESOLVED_REFS,
                Status::True,
                reasons::RESOLVED_REFS,
                "all CA certificate references are resolved",
                generation,
            ),
        };
        vec![accepted, resolved]
    }
}

/// A policy's status: one entry per Gateway that routes to its targets.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicyOutput {
    pub ancestors: Vec<PolicyAncestorOutput>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicyAncestorOutput {
    pub gateway: ObjectKey,
    pub conditions: Vec<Condition>,
}

fn evaluate(policy: &BackendTlsPolicy, config_maps: &HashMap<ObjectKey, &ConfigMap>) -> Evaluated {
    let key = ObjectKey::of(policy);
    let targets = policy
        .spec
        .target_refs
        .iter()
        .filter(|t| t.group.is_empty() && t.kind == "Service")
        .map(|t| {
            (
                ObjectKey::new(key.namespace.clone(), t.name.clone()),
                t.section_name.clone(),
            )
        })
        .collect();
    let validation = &policy.spec.validation;
    let references = validation
        .ca_certificate_refs
        .iter()
        .flatten()
        .map(|r| CaRef {
            group: &r.group,
            kind: &r.kind,
            name: &r.name,
            namespace: &key.namespace,
        });
    // A policy's references are always in its own namespace: nothing to grant.
    let (bundle, unresolved) =
        ca_bundles::concatenate(references, config_maps, reasons::INVALID_KIND, |_| Ok(()));
    let settings = settings(&key, validation, bundle.as_deref());
    let invalid = match &settings {
        Ok(_) => None,
        Err(problem) => Some(problem.clone()),
    };
    Evaluated {
        key,
        generation: generation(policy),
        targets,
        tls: settings.map_err(|(_, message)| message),
        invalid,
        unresolved,
        lost: Vec::new(),
    }
}

/// The proxy's TLS settings for the policy, or its Accepted=False reason and message.
fn settings(
    key: &ObjectKey,
    validation: &BackendTlsPolicyValidation,
    bundle: Option<&str>,
) -> Result<BackendTls, (&'static str, String)> {
    let invalid = |message: String| (reasons::INVALID, message);
    let has_refs = validation
        .ca_certificate_refs
        .as_ref()
        .is_some_and(|r| !r.is_empty());
    let system = match (validation.well_known_ca_certificates.as_deref(), has_refs) {
        (Some(_), true) => {
            return Err(invalid(
                "set either caCertificateRefs or wellKnownCACertificates, not both".into(),
            ));
        }
        (Some(WELL_KNOWN_SYSTEM), false) => true,
        (Some(set), false) => {
            return Err(invalid(format!(
                "wellKnownCACertificates {set:?} is not supported: use \"{WELL_KNOWN_SYSTEM}\" \
                 or reference a ConfigMap holding the CA in caCertificateRefs"
            )));
        }
        (None, false) => {
            return Err(invalid(
                "no caCertificateRefs: the backend's certificate cannot be verified".into(),
            ));
        }
        (None, true) => false,
    };
    if !is_dns_name(&validation.hostname) {
        return Err(invalid(format!(
            "hostname {:?} is not a DNS name",
            validation.hostname
        )));
    }
    let mut subject_alt_names = Vec::new();
    for name in validation.subject_alt_names.iter().flatten() {
        let converted = match name.r#type {
            BackendTlsPolicyValidationSubjectAltNamesType::Hostname => name
                .hostname
                .as_ref()
                .filter(|h| is_dns_name(h.strip_prefix("*.").unwrap_or(h)))
                .map(|h| SubjectAltName::Hostname(h.clone())),
            BackendTlsPolicyValidationSubjectAltNamesType::Uri => name
                .uri
                .as_ref()
                .filter(|u| is_absolute_uri(u))
                .map(|u| SubjectAltName::Uri(u.clone())),
        };
        match converted {
            Some(converted) => subject_alt_names.push(converted),
            None => {
                return Err(invalid(format!(
                    "subjectAltName {name:?} lacks a valid value for its type"
                )));
            }
        }
    }
    let ca_certificates_pem = match (system, bundle) {
        (true, _) => String::new(),
        (false, Some(bundle)) => bundle.to_string(),
        (false, None) => {
            return Err((
                NO_VALID_CA_CERTIFICATE,
                "no caCertificateRef holds a usable CA certificate".into(),
            ));
        }
    };
    Ok(BackendTls {
        policy: key.to_string(),
        server_name: validation.hostname.clone(),
        ca_certificates_pem,
        system_trust_anchors: system,
        subject_alt_names,
        // Set per Gateway when its config is assembled (spec.tls.backend.clientCertificateRef).
        client_certificate: None,
    })
}

/// The name of `service`'s TCP port `port`, when the Service and a named port exist.
pub fn port_name(index: &Index<'_>, service: &ObjectKey, port: i32) -> Option<String> {
    index
        .services
        .get(service)?
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.port == port && backends::protocol_of(p) == "TCP")?
        .name
        .clone()
}

/// For each policy target some Gateway's accepted HTTPRoutes reach, those Gateways.
pub fn ancestors_by_target(
    gateways: &BTreeMap<ObjectKey, GatewayState>,
) -> HashMap<Target, BTreeSet<ObjectKey>> {
    let mut out: HashMap<Target, BTreeSet<ObjectKey>> = HashMap::new();
    for (key, gateway) in gateways {
        let listeners = gateway
            .listeners
            .iter()
            .chain(gateway.listener_sets.iter().flat_map(|set| &set.listeners));
        for attachment in listeners.flat_map(|l| &l.attachments) {
            for target in &attachment.translated.tls_targets {
                out.entry(target.clone()).or_default().insert(key.clone());
            }
        }
    }
    out
}
