//! The operator's certificate authority for the config stream.
//!
//! On start the operator reads Secret `portcullis-ca` (keys `ca.crt`, `ca.key`) in its own
//! namespace, creating it when missing (ECDSA P-256, 10 years). Replicas racing to create it
//! settle on whichever Secret the API server kept. The serving certificate is issued in memory
//! from that CA for the operator Service's DNS names (90 days) and re-issued during a handshake
//! once less than a third of its life is left, so nothing restarts for a rotation. Agents trust
//! the CA through ConfigMap `portcullis-ca` (key `ca.crt`) that the controller writes into every
//! Gateway namespace ([`ca_configmap`]); the CA key never leaves the operator's
//! namespace.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::provision::{CA_CONFIGMAP, MANAGED_BY, MANAGED_BY_LABEL};

/// The Secret (in the operator's namespace) holding the CA certificate and key.
pub const CA_SECRET: &str = "portcullis-ca";
/// Key of the CA certificate (PEM) in the Secret and in the ConfigMaps.
pub const CA_CERT_KEY: &str = "ca.crt";
/// Key of the CA private key (PEM, PKCS#8) in the Secret.
pub const CA_KEY_KEY: &str = "ca.key";
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start being valid a little in the past, for clocks that lag ours.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A CA that can issue serving certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A serving certificate with its key, both PEM.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_pkcs8_der: Vec<u8>,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn offset(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}

impl CertificateAuthority {
    /// A new CA: ECDSA P-256, valid for [`CA_VALIDITY`].
    pub fn generate() -> Result<Self> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Portcullis");
        name.push(DnType::CommonName, "Portcullis config stream CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .context("self-signing the CA certificate")?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and PKCS#8 key, both PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("parsing the CA key")?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).context("parsing the CA certificate")?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate (PEM) agents trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a serving certificate for `names` (DNS names; IP addresses become IP SANs),
    /// valid from now for `validity`, with a fresh ECDSA P-256 key.
    pub fn issue(&self, names: &[String], validity: Duration) -> Result<IssuedCertificate> {
        let Some(first) = names.first() else {
            bail!("a serving certificate needs at least one name");
        };
        let mut params = CertificateParams::new(names.to_vec())
            .with_context(|| format!("invalid certificate names {names:?}"))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Portcullis");
        name.push(DnType::CommonName, first.as_str());
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = now + validity;
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(not_after);
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the serving key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the serving certificate")?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pkcs8_der: key.serialize_der(),
            not_after,
        })
    }

    /// The Secret that stores this CA.
    pub fn to_secret(&self, namespace: &str) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(CA_SECRET.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_string(),
                    MANAGED_BY.to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".to_string()),
            data: Some(BTreeMap::from([
                (
                    CA_CERT_KEY.to_string(),
                    ByteString(self.cert_pem.as_bytes().to_vec()),
                ),
                (
                    CA_KEY_KEY.to_string(),
                    ByteString(self.key_pem.as_bytes().to_vec()),
                ),
            ])),
            ..Default::default()
        }
    }

    /// The CA stored in `secret`.
    pub fn from_secret(secret: &Secret) -> Result<Self> {
        let field = |key: &str| -> Result<String> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .ok_or_else(|| anyhow!("Secret {CA_SECRET} has no {key}"))?;
            String::from_utf8(bytes.0.clone())
                .map_err(|_| anyhow!("Secret {CA_SECRET}: {key} is not PEM text"))
        };
        Self::from_pem(&field(CA_CERT_KEY)?, &field(CA_KEY_KEY)?)
            .with_context(|| format!("Secret {CA_SECRET}"))
    }
}

/// Reads the CA from Secret `portcullis-ca` in `namespace`, creating it when missing. When
/// another replica created it first, its CA wins.
pub async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
) -> Result<CertificateAuthority> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(secret) = api
        .get_opt(CA_SECRET)
        .await
        .with_context(|| format!("reading Secret {namespace}/{CA_SECRET}"))?
    {
        return CertificateAuthority::from_secret(&secret);
    }
    let ca = CertificateAuthority::generate()?;
    match api
        .create(&PostParams::default(), &ca.to_secret(namespace))
        .await
    {
        Ok(_) => {
            tracing::info!(
                namespace,
                secret = CA_SECRET,
                "created the config stream CA"
            );
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let secret = api
                .get(CA_SECRET)
                .await
                .with_context(|| format!("re-reading Secret {namespace}/{CA_SECRET}"))?;
            CertificateAuthority::from_secret(&secret)
        }
        Err(error) => {
            Err(error).with_context(|| format!("creating Secret {namespace}/{CA_SECRET}"))
        }
    }
}

/// ConfigMap `portcullis-ca` for a Gateway namespace: the CA certificate agents trust. It is
/// owned by every Gateway in `namespace` it serves (`owners`: name and uid), so the garbage
/// collector removes it with the last of them.
pub fn ca_configmap(namespace: &str, ca_pem: &str, owners: &[(String, String)]) -> ConfigMap {
    let owner_references = owners
        .iter()
        .map(|(name, uid)| OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "Gateway".into(),
            name: name.clone(),
            uid: uid.clone(),
            controller: None,
            block_owner_deletion: None,
        })
        .collect();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CA_CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            owner_references: Some(owner_references),
            ..ObjectMeta::default()
        },
        data: Some([(CA_CERT_KEY.to_string(), ca_pem.to_string())].into()),
        ..ConfigMap::default()
    }
}

/// The config server's certificate: issued from the CA, re-issued during a handshake once
/// less than a third of its validity is left.
pub struct ServingCertificate {
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
    validity: Duration,
    current: Mutex<Current>,
}

struct Current {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl ServingCertificate {
    /// Issues the first certificate for `names` (e.g. `portcullis.<ns>.svc`,
    /// `portcullis.<ns>.svc.cluster.local`) valid for [`SERVING_VALIDITY`].
    pub fn new(ca: Arc<CertificateAuthority>, names: Vec<String>) -> Result<Self> {
        Self::with_validity(ca, names, SERVING_VALIDITY)
    }

    pub fn with_validity(
        ca: Arc<CertificateAuthority>,
        names: Vec<String>,
        validity: Duration,
    ) -> Result<Self> {
        let current = issue_current(&ca, &names, validity)?;
        Ok(Self {
            ca,
            names,
            validity,
            current: Mutex::new(current),
        })
    }

    /// The certificate to present now, re-issued first when it is due.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if SystemTime::now() >= current.renew_at {
            match issue_current(&self.ca, &self.names, self.validity) {
                Ok(fresh) => {
                    tracing::info!(names = ?self.names, "re-issued the config server certificate");
                    *current = fresh;
                }
                // Keep presenting the old one; the next handshake tries again.
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "re-issuing the config server certificate failed");
                }
            }
        }
        current.key.clone()
    }

    /// A rustls server config (aws-lc-rs, TLS 1.3 and 1.2, ALPN h2) presenting this
    /// certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("choosing TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

fn issue_current(
    ca: &CertificateAuthority,
    names: &[String],
    validity: Duration,
) -> Result<Current> {
    let issued = ca.issue(names, validity)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_pkcs8_der));
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| anyhow!("loading the serving key: {e}"))?;
    let now = SystemTime::now();
    Ok(Current {
        key: Arc::new(CertifiedKey::new(vec![issued.cert_der], signing_key)),
        renew_at: now + validity / 3 * 2,
    })
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    #[test]
    fn a_stored_ca_issues_certificates_its_pem_verifies() {
        let ca = CertificateAuthority::generate().unwrap();
        let secret = ca.to_secret("portcullis-system");
        assert_eq!(secret.metadata.name.as_deref(), Some(CA_SECRET));
        let loaded = CertificateAuthority::from_secret(&secret).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());

        let names = vec![
            "portcullis.portcullis-system.svc".to_string(),
            "127.0.0.1".to_string(),
        ];
        let issued = loaded.issue(&names, SERVING_VALIDITY).unwrap();
        let remaining = issued.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(remaining > SERVING_VALIDITY - Duration::from_secs(60));

        // The certificate issued by the reloaded CA chains to the original CA certificate.
        let mut roots = rustls::RootCertStore::empty();
        let ca_der =
            rustls_pki_types::pem::PemObject::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        roots.add(ca_der).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        for name in ["portcullis.portcullis-system.svc", "127.0.0.1"] {
            let server_name = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &issued.cert_der,
                    &[],
                    &server_name,
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls_pki_types::ServerName::try_from("evil.example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &issued.cert_der,
                    &[],
                    &other,
                    &[],
                    rustls_pki_types::UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn a_broken_secret_is_an_error() {
        let ca = CertificateAuthority::generate().unwrap();
        let mut secret = ca.to_secret("ns");
        secret
            .data
            .as_mut()
            .unwrap()
            .insert(CA_KEY_KEY.into(), ByteString(b"garbage".to_vec()));
        assert!(CertificateAuthority::from_secret(&secret).is_err());
        secret.data.as_mut().unwrap().remove(CA_CERT_KEY);
        let error = CertificateAuthority::from_secret(&secret).unwrap_err();
        assert!(format!("{error:#}").contains("ca.crt"), "{error:#}");
    }

    #[test]
    fn the_serving_certificate_is_reissued_when_due() {
        let ca = Arc::new(CertificateAuthority::generate().unwrap());
        let serving =
            ServingCertificate::with_validity(ca, vec!["localhost".into()], Duration::ZERO)
                .unwrap();
        let first = serving.certified_key();
        let second = serving.certified_key();
        assert_ne!(
            first.cert[0], second.cert[0],
            "a due certificate is re-issued"
        );

        let ca = Arc::new(CertificateAuthority::generate().unwrap());
        let serving = Arc::new(ServingCertificate::new(ca, vec!["localhost".into()]).unwrap());
        assert!(Arc::ptr_eq(
            &serving.certified_key(),
            &serving.certified_key()
        ));
        serving.server_config().unwrap();
    }

    #[test]
    fn the_configmap_carries_the_ca() {
        let owners = [
            ("a".to_string(), "uid-a".to_string()),
            ("b".to_string(), "uid-b".to_string()),
        ];
        let cm = ca_configmap("infra", "PEM", &owners);
        assert_eq!(cm.metadata.name.as_deref(), Some(CA_CONFIGMAP));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("infra"));
        assert_eq!(cm.data.unwrap()["ca.crt"], "PEM");
        let refs = cm.metadata.owner_references.unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[1].uid, "uid-b");
        // Not a controller reference: several Gateways share the ConfigMap.
        assert!(refs.iter().all(|r| r.controller.is_none()));
    }
}
