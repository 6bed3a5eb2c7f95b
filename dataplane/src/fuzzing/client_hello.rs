//! The `client_hello` target: the ClientHello reader (SNI, ChaCha20 preference), on any bytes a
//! client may send.

use crate::route::host::MAX_HOST_LEN;
use crate::tls::client_hello::{HelloError, HelloFacts, parse};

pub fn client_hello(data: &[u8]) {
    let result = parse(data);
    if let Ok(Some(HelloFacts {
        server_name: Some(name),
        ..
    })) = &result
    {
        assert!(!name.is_empty() && name.len() <= MAX_HOST_LEN, "{name:?}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_graphic() && b != b':' && !b.is_ascii_uppercase()),
            "not a normalized host name: {name:?}"
        );
    }
    // A verdict, once reached, does not depend on what the client sends after it.
    if matches!(result, Ok(Some(_)) | Err(_)) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x00]);
        let again = parse(&longer);
        match (&result, &again) {
            (Err(HelloError::TooLong), _) | (Ok(_), Ok(_)) | (Err(_), Err(_)) => {}
            _ => panic!("{result:?} became {again:?} with more bytes"),
        }
        if let (Ok(first), Ok(second)) = (&result, &again) {
            assert_eq!(first, second);
        }
    }
}

/// Real first flights of a rustls client (TLS 1.3 and 1.2, with and without SNI).
pub fn rustls_hellos() -> Vec<Vec<u8>> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut out = Vec::new();
    for name in ["db.example.com", "a.b.example.org", "192.0.2.1"] {
        let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
        else {
            continue;
        };
        let config = builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let Ok(server) = rustls::pki_types::ServerName::try_from(name.to_string()) else {
            continue;
        };
        let Ok(mut client) = rustls::ClientConnection::new(std::sync::Arc::new(config), server)
        else {
            continue;
        };
        let mut flight = Vec::new();
        if client.write_tls(&mut flight).is_ok() {
            out.push(flight);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::fuzzing::tests::replay;

    #[test]
    fn fuzzing_client_hello_replays() {
        replay("client_hello");
    }
}
