//! CA bundles held in ConfigMaps (`ca.crt`), as BackendTLSPolicies reference them (to verify
//! backends) and Gateways' `tls.frontend` does (to verify clients): one rule for which
//! references are usable and how their certificates combine.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ConfigMap;
use portcullis_api::certificate::parse_ca_bundle;

use super::ObjectKey;
use super::gateways::Problem;

/// The ConfigMap key holding the CA bundle.
pub const CA_KEY: &str = "ca.crt";
pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";

/// A CA certificate reference, its namespace already defaulted.
pub struct CaRef<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
}

/// The PEM of every usable reference, concatenated (None when none is usable), and the first
/// unusable reference's ResolvedRefs reason and message. `invalid_kind` is the reason for a
/// reference to anything but a core ConfigMap (policies and listeners name it differently);
/// `permitted` says whether a reference may be read at all (ReferenceGrants).
pub fn concatenate<'a>(
    references: impl IntoIterator<Item = CaRef<'a>>,
    config_maps: &HashMap<ObjectKey, &ConfigMap>,
    invalid_kind: &'static str,
    permitted: impl Fn(&CaRef<'_>) -> Result<(), Problem>,
) -> (Option<String>, Option<Problem>) {
    let mut bundle = String::new();
    let mut first_problem = None;
    for reference in references {
        let key = ObjectKey::new(reference.namespace, reference.name);
        let problem = if !reference.group.is_empty() || reference.kind != "ConfigMap" {
            let kind = match reference.group {
                "" => reference.kind.to_string(),
                group => format!("{}.{group}", reference.kind),
            };
            Some((
                invalid_kind,
                format!("caCertificateRef {kind} {key}: only core ConfigMaps are supported"),
            ))
        } else if let Err(problem) = permitted(&reference) {
            Some(problem)
        } else {
            match usable_pem(config_maps.get(&key).copied()) {
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
fn usable_pem(config_map: Option<&ConfigMap>) -> Result<&str, String> {
    let config_map = config_map.ok_or("not found")?;
    let pem = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(CA_KEY))
        .ok_or(format!("no {CA_KEY} key"))?;
    parse_ca_bundle(pem).map_err(|e| format!("key {CA_KEY}: {e}"))?;
    Ok(pem)
}
