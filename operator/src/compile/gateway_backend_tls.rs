//! A Gateway's `spec.tls.backend`: the client certificate its proxies present to TLS backends
//! that ask for one (`clientCertificateRef`, feature GatewayBackendClientCertificate).
//!
//! The reference resolves like a listener's certificateRef (a core Secret with `tls.crt` and
//! `tls.key`, another namespace only through a ReferenceGrant), and the certificate is one
//! config entry named `namespace/name`, shared with listeners that use the same Secret. A
//! reference that does not resolve turns the Gateway's ResolvedRefs False
//! (InvalidClientCertificateRef, or RefNotPermitted) and nothing else: the Gateway stays
//! accepted and its backends are reached without a client certificate.

use portcullis_api::config::Certificate;
use portcullis_api::gateway_api::gateway::Gateway;

use super::conditions::reasons;
use super::gateways::{CertificateRef, Problem, resolve_certificate};
use super::{GATEWAY_GROUP, Index, refs};

/// The Gateway's backend client certificate: None when it names none, otherwise the
/// certificate or why its reference does not resolve.
pub fn client_certificate(
    index: &Index<'_>,
    gateway: &Gateway,
) -> Option<Result<Certificate, Problem>> {
    let reference = gateway
        .spec
        .tls
        .as_ref()?
        .backend
        .as_ref()?
        .client_certificate_ref
        .as_ref()?;
    let namespace = gateway.metadata.namespace.as_deref().unwrap_or_default();
    let from = refs::From {
        group: GATEWAY_GROUP,
        kind: "Gateway",
        namespace,
    };
    let reference = CertificateRef {
        group: reference.group.as_deref().unwrap_or(""),
        kind: reference.kind.as_deref().unwrap_or("Secret"),
        namespace: reference.namespace.as_deref().unwrap_or(namespace),
        name: &reference.name,
    };
    Some(resolve_certificate(
        index,
        &from,
        &reference,
        "tls.backend.clientCertificateRef",
        reasons::INVALID_CLIENT_CERTIFICATE_REF,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Index, Input};
    use serde_json::json;

    /// A self-signed certificate and its key, as PEM.
    fn certificate() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["client.example.com".into()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn gateway(reference: Option<serde_json::Value>) -> Gateway {
        let mut spec = json!({
            "gatewayClassName": "portcullis",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        });
        if let Some(reference) = reference {
            spec["tls"] = json!({"backend": {"clientCertificateRef": reference}});
        }
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "infra"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn secret(
        namespace: &str,
        name: &str,
        data: serde_json::Value,
    ) -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/tls",
            "stringData": data,
        }))
        .unwrap()
    }

    fn resolve(input: &Input, reference: serde_json::Value) -> Result<Certificate, Problem> {
        let index = Index::new(input);
        client_certificate(&index, &gateway(Some(reference))).expect("a reference")
    }

    #[test]
    fn no_reference_no_certificate() {
        let input = Input::default();
        let index = Index::new(&input);
        assert!(client_certificate(&index, &gateway(None)).is_none());
    }

    #[test]
    fn a_tls_secret_in_the_gateway_namespace_resolves_by_its_name() {
        let (cert, key) = certificate();
        let input = Input {
            secrets: vec![secret(
                "infra",
                "client",
                json!({"tls.crt": cert, "tls.key": key}),
            )],
            ..Input::default()
        };
        let resolved = resolve(&input, json!({"name": "client"})).unwrap();
        assert_eq!(resolved.name, "infra/client");
        assert_eq!(resolved.cert_chain_pem, cert);
        assert_eq!(resolved.private_key_pem, key);
    }

    #[test]
    fn problems_have_the_gateway_reasons() {
        let (cert, key) = certificate();
        let input = Input {
            secrets: vec![
                secret("infra", "client", json!({"tls.crt": cert, "tls.key": key})),
                secret("infra", "empty", json!({})),
                secret("certs", "client", json!({"tls.crt": cert, "tls.key": key})),
            ],
            ..Input::default()
        };
        let reason = |reference| resolve(&input, reference).unwrap_err().0;
        let invalid = reasons::INVALID_CLIENT_CERTIFICATE_REF;
        assert_eq!(reason(json!({"name": "missing"})), invalid);
        assert_eq!(reason(json!({"name": "empty"})), invalid);
        assert_eq!(
            reason(json!({"group": "example.com", "kind": "Secret", "name": "client"})),
            invalid
        );
        assert_eq!(
            reason(json!({"kind": "ConfigMap", "name": "client"})),
            invalid
        );
        assert_eq!(
            reason(json!({"name": "client", "namespace": "certs"})),
            reasons::REF_NOT_PERMITTED
        );
        let (_, message) = resolve(&input, json!({"name": "empty"})).unwrap_err();
        assert!(message.contains("infra/empty"), "{message}");
    }

    #[test]
    fn a_reference_grant_from_gateways_lets_it_cross_namespaces() {
        let (cert, key) = certificate();
        let grant = |kind: &str| {
            serde_json::from_value(json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "ReferenceGrant",
                "metadata": {"name": "g", "namespace": "certs"},
                "spec": {
                    "from": [{"group": "gateway.networking.k8s.io", "kind": kind, "namespace": "infra"}],
                    "to": [{"group": "", "kind": "Secret"}],
                },
            }))
            .unwrap()
        };
        let mut input = Input {
            secrets: vec![secret(
                "certs",
                "client",
                json!({"tls.crt": cert, "tls.key": key}),
            )],
            reference_grants: vec![grant("HTTPRoute")],
            ..Input::default()
        };
        let reference = json!({"name": "client", "namespace": "certs"});
        assert_eq!(
            resolve(&input, reference.clone()).unwrap_err().0,
            reasons::REF_NOT_PERMITTED,
            "the grant is for HTTPRoutes"
        );
        input.reference_grants = vec![grant("Gateway")];
        assert_eq!(resolve(&input, reference).unwrap().name, "certs/client");
    }
}
