//! Scenario 8: how long a new HTTPRoute takes from `kubectl apply` to its first 200 through the
//! Gateway, over 20 routes. A measurement, printed; it only fails when a route never serves.

use std::time::{Duration, Instant};

use portcullis_e2e::cluster::serving;
use portcullis_e2e::http::HttpClient;
use portcullis_e2e::{objects, percentile};

use crate::{READY, setup};

#[tokio::test(flavor = "multi_thread")]
async fn route_propagation_time() {
    let setup = setup().await;
    let cluster = &setup.cluster;
    let ns = cluster.namespace("e2e-routes", &[]).await;
    cluster
        .apply(&objects::http_gateway(
            &ns.name,
            "routes",
            &setup.class,
            "{from: Same}",
        ))
        .await;
    cluster
        .apply(&objects::echo_backend(&ns.name, "web", "web", 1))
        .await;
    cluster
        .apply(&objects::http_route(
            &ns.name,
            "warmup",
            &ns.name,
            "routes",
            "warmup.example.com",
            &[("web", 1)],
        ))
        .await;
    let address = cluster.programmed_address(&ns.name, "routes", READY).await;
    serving(&address, "warmup.example.com", READY).await;

    let mut samples = Vec::new();
    for i in 0..20 {
        let host = format!("r{i}.example.com");
        let route = objects::http_route(
            &ns.name,
            &format!("r{i}"),
            &ns.name,
            "routes",
            &host,
            &[("web", 1)],
        );
        let started = Instant::now();
        cluster.apply(&route).await;
        let (address, host) = (address.clone(), host.clone());
        let took = tokio::task::spawn_blocking(move || {
            let mut client = HttpClient::new(&address);
            loop {
                if client.get(&host, "/").is_ok_and(|r| r.status == 200) {
                    return Some(started.elapsed());
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("route r{i} never served"));
        samples.push(took);
    }
    let p50 = percentile(&mut samples, 50.0);
    let p99 = percentile(&mut samples, 99.0);
    println!(
        "route propagation over {} routes (apply → first 200): p50 {p50:?}, p99 {p99:?}, max {:?}",
        samples.len(),
        samples.iter().max().unwrap()
    );
}
