//! Scenario 4: a 95/5 canary splits 4 000 requests within ±3 percentage points, and a change
//! to 50/50 takes effect within a second.

use std::time::{Duration, Instant};

use portcullis_e2e::cluster::serving;
use portcullis_e2e::http::HttpClient;
use portcullis_e2e::load::Load;
use portcullis_e2e::objects;

use crate::{READY, setup};

const HOST: &str = "shop.example.com";

fn route(app: &str, infra: &str, v1: u32, v2: u32) -> String {
    objects::http_route(
        app,
        "shop",
        infra,
        "shared",
        HOST,
        &[("v1", v1), ("v2", v2)],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_splits_by_weight_and_weight_changes_apply_within_a_second() {
    let setup = setup().await;
    let cluster = &setup.cluster;
    let infra = cluster.namespace("e2e-infra", &[]).await;
    let app = cluster.namespace("e2e-shop", &[]).await;
    cluster
        .apply(&objects::http_gateway(
            &infra.name,
            "shared",
            &setup.class,
            "{from: All}",
        ))
        .await;
    cluster
        .apply(&objects::echo_backend(&app.name, "v1", "v1", 1))
        .await;
    cluster
        .apply(&objects::echo_backend(&app.name, "v2", "v2", 1))
        .await;
    cluster.deployment_ready(&app.name, "v1", 1, READY).await;
    cluster.deployment_ready(&app.name, "v2", 1, READY).await;
    cluster.apply(&route(&app.name, &infra.name, 95, 5)).await;
    let address = cluster
        .programmed_address(&infra.name, "shared", READY)
        .await;
    serving(&address, HOST, READY).await;

    // 4 000 requests on 4 keep-alive connections.
    let counts = {
        let address = address.clone();
        tokio::task::spawn_blocking(move || {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let address = address.clone();
                    std::thread::spawn(move || {
                        let mut client = HttpClient::new(&address);
                        let mut v2 = 0usize;
                        for _ in 0..1000 {
                            let response = client.get(HOST, "/").expect("request");
                            assert_eq!(response.status, 200);
                            if response.echo().expect("echo").backend == "v2" {
                                v2 += 1;
                            }
                        }
                        v2
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap())
                .sum::<usize>()
        })
        .await
        .unwrap()
    };
    let share = counts as f64 / 4000.0 * 100.0;
    println!("95/5 canary: v2 answered {counts} of 4000 requests ({share:.2} %)");
    assert!(
        (share - 5.0).abs() <= 3.0,
        "v2 share {share:.2} % is not 5 ± 3 %"
    );

    // Change to 50/50 under traffic; find when the split turned.
    let load = Load::start(&address, HOST, "/", 4, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let changed = Instant::now();
    cluster.apply(&route(&app.name, &infra.name, 50, 50)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = tokio::task::spawn_blocking(move || load.stop())
        .await
        .unwrap();
    assert!(tally.failures.is_empty(), "{}", tally.summary());
    let mut after: Vec<(Instant, bool)> = tally
        .answers
        .iter()
        .filter(|(at, _)| *at >= changed)
        .map(|(at, backend)| (*at, backend == "v2"))
        .collect();
    after.sort_by_key(|(at, _)| *at);
    assert!(after.len() > 400, "too little traffic: {}", tally.summary());
    // The change point: answers before it follow 95/5, after it 50/50. The most likely split
    // index, by log-likelihood, is when the proxies switched.
    let (ln_v1_old, ln_v2_old, ln_new) = (0.95f64.ln(), 0.05f64.ln(), 0.5f64.ln());
    let n = after.len();
    let mut best = (n as f64 * ln_new, 0);
    let mut before = 0.0;
    for (i, (_, is_v2)) in after.iter().enumerate() {
        before += if *is_v2 { ln_v2_old } else { ln_v1_old };
        // Split after answer i: i + 1 answers before the change.
        let likelihood = before + (n - i - 1) as f64 * ln_new;
        if likelihood > best.0 {
            best = (likelihood, i + 1);
        }
    }
    let switched = best.1;
    assert!(switched < n, "the split never changed to 50/50");
    let tail = &after[switched..];
    let tail_share = tail.iter().filter(|(_, v2)| *v2).count() as f64 / tail.len() as f64;
    assert!(
        (0.4..=0.6).contains(&tail_share),
        "after the change v2 got {tail_share:.2}"
    );
    let turned = after[switched].0.duration_since(changed);
    println!(
        "50/50 took effect {turned:?} after the apply was sent ({}; v2 share after: {:.1} %)",
        tally.summary(),
        tail_share * 100.0
    );
    assert!(turned <= Duration::from_secs(1), "took {turned:?}");
}
