//! Scenario 5: an HTTPS listener's cross-namespace certificate needs a ReferenceGrant; with it
//! the certificate is served, and a rotated Secret reaches new connections within 5 s while an
//! open connection keeps working.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis_e2e::tls::{TlsConnection, self_signed};
use portcullis_e2e::{eventually, objects};

use crate::{READY, STATUS, setup};

const HOST: &str = "secure.example.com";

fn gateway(namespace: &str, class: &str, certs: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: secure
  namespace: {namespace}
spec:
  gatewayClassName: {class}
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {{namespaces: {{from: All}}}}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: {HOST}
    tls:
      mode: Terminate
      certificateRefs:
      - {{kind: Secret, name: secure-cert, namespace: {certs}}}
    allowedRoutes: {{namespaces: {{from: All}}}}
"#
    )
}

fn reference_grant(certs: &str, gateway_namespace: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata:
  name: gateways-may-use-certs
  namespace: {certs}
spec:
  from:
  - {{group: gateway.networking.k8s.io, kind: Gateway, namespace: {gateway_namespace}}}
  to:
  - {{group: "", kind: Secret}}
"#
    )
}

/// The certificate a new connection to `address` with SNI HOST gets, if the handshake works.
/// Runs `exchange` on a fresh TLS connection to `address`, off the runtime (blocking I/O).
async fn over_tls<T: Send + 'static>(
    address: &str,
    exchange: impl FnOnce(TlsConnection) -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    let address = address.to_string();
    tokio::task::spawn_blocking(move || {
        TlsConnection::connect(&address, HOST)
            .and_then(exchange)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn served_certificate(address: &str) -> Result<Vec<u8>, String> {
    over_tls(address, |connection| Ok(connection.certificate)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_need_a_grant_across_namespaces_and_rotate_without_dropping_connections() {
    let setup = setup().await;
    let cluster = &setup.cluster;
    let infra = cluster.namespace("e2e-infra", &[]).await;
    let certs = cluster.namespace("e2e-certs", &[]).await;
    let app = cluster.namespace("e2e-app", &[]).await;
    let (first_pem, first_key, first_der) = self_signed(HOST);
    cluster
        .apply(&objects::tls_secret(
            &certs.name,
            "secure-cert",
            &first_pem,
            &first_key,
        ))
        .await;
    cluster
        .apply(&objects::echo_backend(&app.name, "web", "web", 1))
        .await;
    cluster
        .apply(&objects::http_route(
            &app.name,
            "web",
            &infra.name,
            "secure",
            HOST,
            &[("web", 1)],
        ))
        .await;
    cluster
        .apply(&gateway(&infra.name, &setup.class, &certs.name))
        .await;

    let refused = eventually(
        "ResolvedRefs=False on the HTTPS listener",
        STATUS,
        || async {
            Ok(cluster
                .listener_condition(&infra.name, "secure", "https", "ResolvedRefs")
                .await
                .filter(|c| c.status == "False"))
        },
    )
    .await;
    assert_eq!(refused.reason, "RefNotPermitted");
    let address = cluster
        .programmed_address(&infra.name, "secure", READY)
        .await;
    let tls_address = format!("{address}:443");
    if let Ok(served) = served_certificate(&tls_address).await {
        assert_ne!(
            served, first_der,
            "the certificate is served without a ReferenceGrant"
        );
    }

    cluster
        .apply(&reference_grant(&certs.name, &infra.name))
        .await;
    eventually("the certificate served", READY, || async {
        Ok(served_certificate(&tls_address)
            .await
            .ok()
            .filter(|c| *c == first_der))
    })
    .await;
    let resolved = cluster
        .listener_condition(&infra.name, "secure", "https", "ResolvedRefs")
        .await
        .unwrap();
    assert_eq!(resolved.status, "True");
    // The listener serves the certificate as soon as the grant lands; the route's backend can
    // take longer to have a ready endpoint. The open connection starts from a served request.
    eventually("a request over HTTPS answered 200", READY, || async {
        Ok(
            over_tls(&tls_address, |mut connection| connection.get(HOST, "/"))
                .await
                .ok()
                .filter(|response| response.status == 200),
        )
    })
    .await;

    // An open connection keeps making requests across the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let open = {
        let (address, stop) = (tls_address.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut connection = TlsConnection::connect(&address, HOST).expect("connect");
            let mut answered = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = connection
                    .get(HOST, "/")
                    .map_err(|e| format!("the open connection failed after {answered}: {e}"))?;
                if response.status != 200 {
                    return Err(format!("status {} after {answered}", response.status));
                }
                answered += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok::<_, String>((answered, connection.certificate))
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (second_pem, second_key, second_der) = self_signed(HOST);
    let rotated = Instant::now();
    cluster
        .apply(&objects::tls_secret(
            &certs.name,
            "secure-cert",
            &second_pem,
            &second_key,
        ))
        .await;
    eventually(
        "the rotated certificate served",
        Duration::from_secs(30),
        || async {
            Ok(served_certificate(&tls_address)
                .await
                .ok()
                .filter(|c| *c == second_der))
        },
    )
    .await;
    let took = rotated.elapsed();
    println!("rotated certificate served to new connections after {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (answered, old_certificate) = open.join().unwrap().unwrap();
    assert!(
        answered > 20,
        "the open connection made only {answered} requests"
    );
    assert_eq!(
        old_certificate, first_der,
        "the open connection keeps its session"
    );
    assert!(took <= Duration::from_secs(5), "rotation took {took:?}");
}
