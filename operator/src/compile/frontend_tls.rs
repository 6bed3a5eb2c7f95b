//! Client certificate validation at the Gateway (`spec.tls.frontend`): which CA bundle each
//! TLS-terminating listener asks clients to present a certificate from, per port or by default.
//!
//! A listener whose validation names no usable CA certificate is not accepted
//! (NoValidCACertificate) and not served: serving it without the validation it asks for would
//! let in clients it means to refuse.

use portcullis_api::config::{ClientValidation, ClientValidationMode};
use portcullis_api::gateway_api::gateway::{
    Gateway, GatewayTlsFrontendDefaultValidationMode, GatewayTlsFrontendPerPortTlsValidationMode,
};

use super::ca_bundles::{self, CaRef};
use super::conditions::reasons;
use super::gateways::{ListenerState, Protocol};
use super::{GATEWAY_GROUP, Index, ObjectKey, refs};

pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";

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
        // The default and the per-port validation are two generated types of one shape.
        macro_rules! validation {
            ($v:expr, $fallback:path) => {
                Validation {
                    references: $v
                        .ca_certificate_refs
                        .iter()
                        .map(|r| CaRef {
                            group: &r.group,
                            kind: &r.kind,
                            name: &r.name,
                            namespace: r.namespace.as_deref().unwrap_or(namespace),
                        })
                        .collect(),
                    mode: match $v.mode {
                        Some($fallback) => ClientValidationMode::AllowInsecureFallback,
                        _ => ClientValidationMode::AllowValidOnly,
                    },
                }
            };
        }
        let validation = match per_port {
            Some(per_port) => per_port.tls.validation.as_ref().map(|v| {
                validation!(
                    v,
                    GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback
                )
            }),
            None => frontend.default.validation.as_ref().map(|v| {
                validation!(
                    v,
                    GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback
                )
            }),
        };
        let Some(validation) = validation else {
            continue;
        };
        let permitted = |reference: &CaRef<'_>| {
            let from = refs::From {
                group: GATEWAY_GROUP,
                kind: "Gateway",
                namespace,
            };
            let to = refs::To {
                group: "",
                kind: "ConfigMap",
                namespace: reference.namespace,
                name: reference.name,
            };
            if refs::permitted(&index.input.reference_grants, &from, &to) {
                return Ok(());
            }
            let key = ObjectKey::new(reference.namespace, reference.name);
            Err((
                reasons::REF_NOT_PERMITTED,
                format!("ConfigMap {key} is in another namespace and no ReferenceGrant allows it"),
            ))
        };
        let (bundle, problem) = ca_bundles::concatenate(
            validation.references,
            &index.config_maps,
            INVALID_CA_CERTIFICATE_KIND,
            permitted,
        );
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
