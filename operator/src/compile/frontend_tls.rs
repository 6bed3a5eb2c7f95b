//! Client certificate validation at the Gateway (`spec.tls.frontend`): which CA bundle each
//! TLS-terminating listener asks clients to present a certificate from, per port or by default.
//!
//! A listener whose validation names no usable CA certificate is not accepted
//! (NoValidCACertificate) and not served: serving it without the validation it asks for would
//! let in clients it means to refuse.

use k8s_openapi::api::core::v1::ConfigMap;
use portcullis_api::certificate::parse_ca_bundle;
use portcullis_api::config::{ClientValidation, ClientValidationMode};
use portcullis_api::gateway_api::gateway::{
    Gateway, GatewayTlsFrontendDefaultValidationMode, GatewayTlsFrontendPerPortTlsValidationMode,
};

use super::backend_tls::CA_KEY;
use super::conditions::reasons;
use super::gateways::{ListenerState, Problem, Protocol};
use super::{GATEWAY_GROUP, Index, ObjectKey, refs};

pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";

/// A CA certificate reference as both the default and the per-port validation spell it.
struct CaRef<'a> {
    group: &'a str,
    kind: &'a str,
    name: &'a str,
    namespace: Option<&'a str>,
}

/// The validation a port asks for: its references and mode.
struct Validation<'a> {
    references: Vec<CaRef<'a>>,
    mode: ClientValidationMode,
}

/// Applies the Gateway's frontend validation to its listeners that terminate TLS. Returns
/// whether any of them lets clients through without a valid certificate
/// (AllowInsecureFallback), which the Gateway reports.
pub fn apply(index: &Index<'_>, gateway: &Gateway, listeners: &mut [ListenerState]) -> bool {
    let Some(frontend) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return false;
    };
    let namespace = gateway.metadata.namespace.as_deref().unwrap_or_default();
    let mut insecure = false;
    for listener in listeners.iter_mut() {
        let terminates = match listener.protocol {
            Some(Protocol::Https) => true,
            Some(Protocol::Tls) => !listener.passthrough,
            _ => false,
        };
        if !terminates || listener.not_accepted.is_some() {
            continue;
        }
        let per_port = frontend
            .per_port
            .iter()
            .flatten()
            .find(|p| p.port == i32::from(listener.port));
        let validation = match per_port {
            Some(per_port) => per_port.tls.validation.as_ref().map(|v| Validation {
                references: v
                    .ca_certificate_refs
                    .iter()
                    .map(|r| CaRef {
                        group: &r.group,
                        kind: &r.kind,
                        name: &r.name,
                        namespace: r.namespace.as_deref(),
                    })
                    .collect(),
                mode: match v.mode {
                    Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback) => {
                        ClientValidationMode::AllowInsecureFallback
                    }
                    _ => ClientValidationMode::AllowValidOnly,
                },
            }),
            None => frontend.default.validation.as_ref().map(|v| Validation {
                references: v
                    .ca_certificate_refs
                    .iter()
                    .map(|r| CaRef {
                        group: &r.group,
                        kind: &r.kind,
                        name: &r.name,
                        namespace: r.namespace.as_deref(),
                    })
                    .collect(),
                mode: match v.mode {
                    Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback) => {
                        ClientValidationMode::AllowInsecureFallback
                    }
                    _ => ClientValidationMode::AllowValidOnly,
                },
            }),
        };
        let Some(validation) = validation else {
            continue;
        };
        let (bundle, problem) = ca_bundle(index, namespace, &validation.references);
        if let Some(problem) = problem {
            // The listener's own certificate problems come first.
            listener.unresolved.get_or_insert(problem);
        }
        match bundle {
            Some(pem) => {
                insecure |= validation.mode == ClientValidationMode::AllowInsecureFallback;
                listener.client_validation = Some(ClientValidation {
                    ca_certificates_pem: pem,
                    mode: validation.mode,
                });
            }
            None => {
                listener.not_accepted = Some((
                    NO_VALID_CA_CERTIFICATE,
                    format!(
                        "no caCertificateRef of the Gateway's client certificate validation for \
                         port {} holds a usable CA certificate",
                        listener.port
                    ),
                ));
            }
        }
    }
    insecure
}

/// The PEM of every usable reference, concatenated (None when none is usable), and the first
/// unusable reference's ResolvedRefs reason and message.
fn ca_bundle(
    index: &Index<'_>,
    gateway_namespace: &str,
    references: &[CaRef<'_>],
) -> (Option<String>, Option<Problem>) {
    let mut bundle = String::new();
    let mut first_problem = None;
    for reference in references {
        let namespace = reference.namespace.unwrap_or(gateway_namespace);
        let key = ObjectKey::new(namespace, reference.name);
        let problem = if !reference.group.is_empty() || reference.kind != "ConfigMap" {
            let kind = match reference.group {
                "" => reference.kind.to_string(),
                group => format!("{}.{group}", reference.kind),
            };
            Some((
                INVALID_CA_CERTIFICATE_KIND,
                format!("caCertificateRef {kind} {key}: only core ConfigMaps are supported"),
            ))
        } else if !refs::permitted(
            &index.input.reference_grants,
            &refs::From {
                group: GATEWAY_GROUP,
                kind: "Gateway",
                namespace: gateway_namespace,
            },
            &refs::To {
                group: "",
                kind: "ConfigMap",
                namespace,
                name: reference.name,
            },
        ) {
            Some((
                reasons::REF_NOT_PERMITTED,
                format!("ConfigMap {key} is in another namespace and no ReferenceGrant allows it"),
            ))
        } else {
            match usable_pem(index.config_maps.get(&key).copied()) {
                Ok(pem) => {
                    bundle.push_str(pem);
                    if !pem.ends_with('\n') {
                        bundle.push('\n');
                    }
                    None
                }
                Err(why) => Some((
                    INVALID_CA_CERTIFICATE_REF,
                    format!("ConfigMap {key}: {why}"),
                )),
            }
        };
        if first_problem.is_none() {
            first_problem = problem;
        }
    }
    ((!bundle.is_empty()).then_some(bundle), first_problem)
}

/// The `ca.crt` of a ConfigMap, when it holds a usable CA bundle.
pub fn usable_pem(config_map: Option<&ConfigMap>) -> Result<&str, String> {
    let config_map = config_map.ok_or("not found")?;
    let pem = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(CA_KEY))
        .ok_or(format!("no {CA_KEY} key"))?;
    parse_ca_bundle(pem).map_err(|e| format!("key {CA_KEY}: {e}"))?;
    Ok(pem)
}
