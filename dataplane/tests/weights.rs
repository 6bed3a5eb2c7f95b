//! Weighted backend choice and endpoint round robin over real sockets: shares follow the
//! configured weights, weight 0 is never chosen, invalid shares answer 500, endpoints are used
//! in turn, and a pushed config changes the split for new requests on old connections too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;

use portcullis_api::CompiledConfig;
use portcullis_api::config::WeightedBackend;
use portcullis_api::frame::Reply;
use support::config::{invalid, route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

/// What a batch of requests got: counts per backend name (from `x-backend`; "-" when the proxy
/// answered itself) and per status.
#[derive(Debug, Default)]
struct Tally {
    backends: HashMap<String, u64>,
    statuses: HashMap<u16, u64>,
    total: u64,
    /// How often the proxy closed a connection and the client had to open another.
    reconnects: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        for (name, count) in other.backends {
            *self.backends.entry(name).or_default() += count;
        }
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.total += other.total;
        self.reconnects += other.reconnects;
    }

    fn backend(&self, name: &str) -> u64 {
        self.backends.get(name).copied().unwrap_or(0)
    }

    fn status(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Share of `name` in percent.
    fn share(&self, name: &str) -> f64 {
        100.0 * self.backend(name) as f64 / self.total as f64
    }

    fn status_share(&self, status: u16) -> f64 {
        100.0 * self.status(status) as f64 / self.total as f64
    }
}

/// Sends `count` keep-alive GETs on `client`, reconnecting if the proxy closes.
fn run_on(client: &mut Client, port: u16, count: usize) -> Tally {
    let mut tally = Tally::default();
    for i in 0..count {
        let response = client.get("example.com", &format!("/status/200?i={i}"));
        let name = response.backend().unwrap_or("-").to_string();
        *tally.backends.entry(name).or_default() += 1;
        *tally.statuses.entry(response.status).or_default() += 1;
        tally.total += 1;
        if response
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            *client = Client::connect(port);
            tally.reconnects += 1;
        }
    }
    tally
}

/// `threads` client connections in parallel, `per_thread` keep-alive requests each.
fn run_parallel(port: u16, threads: usize, per_thread: usize) -> Tally {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                run_on(&mut client, port, per_thread)
            })
        })
        .collect();
    let mut tally = Tally::default();
    for handle in handles {
        tally.add(handle.join().unwrap());
    }
    tally
}

fn assert_share(tally: &Tally, name: &str, expected: f64, tolerance: f64) {
    let share = tally.share(name);
    assert!(
        (share - expected).abs() <= tolerance,
        "{name}: {share:.2}% of {} requests, expected {expected}% ± {tolerance} pp ({tally:?})",
        tally.total
    );
}

/// One HTTP port, one catch-all rule with `shares`, and backends "ns/<name>:80" for each of
/// `backends`.
fn config(
    generation: u64,
    port: u16,
    backends: &[&Backend],
    shares: Vec<WeightedBackend>,
) -> CompiledConfig {
    let mut builder = ConfigBuilder::new(generation);
    for backend in backends {
        builder = builder.backend(&format!("ns/{}:80", backend.name), &[backend]);
    }
    builder
        .http_port(
            port,
            "http",
            vec![route("ns/split", &[], vec![rule(vec![], shares)])],
        )
        .build()
}

#[test]
fn ninety_five_five_split_over_ten_thousand_requests() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let port = free_port();
    let _proxy = Proxy::start_with(
        &config(
            1,
            port,
            &[&a, &b],
            vec![to("ns/a:80", 95), to("ns/b:80", 5)],
        ),
        &["--cores", "2"],
    );
    let tally = run_parallel(port, 10, 1000);
    assert_eq!(tally.total, 10_000);
    assert_eq!(tally.status(200), 10_000, "{tally:?}");
    assert_eq!(tally.backend("a") + tally.backend("b"), 10_000);
    assert_share(&tally, "a", 95.0, 2.0);
    assert_share(&tally, "b", 5.0, 2.0);
    // The backends agree with what the clients saw.
    assert_eq!(a.request_count() as u64, tally.backend("a"));
    assert_eq!(b.request_count() as u64, tally.backend("b"));
}

#[test]
fn zero_weight_backend_gets_nothing() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let port = free_port();
    let _proxy = Proxy::start(&config(
        1,
        port,
        &[&a, &b, &c],
        vec![to("ns/a:80", 70), to("ns/b:80", 30), to("ns/c:80", 0)],
    ));
    let tally = run_parallel(port, 5, 1000);
    assert_eq!(tally.total, 5_000);
    assert_eq!(tally.status(200), 5_000, "{tally:?}");
    assert_eq!(tally.backend("c"), 0, "{tally:?}");
    assert_eq!(c.request_count(), 0);
    assert_eq!(c.connection_count(), 0);
    assert_share(&tally, "a", 70.0, 2.0);
    assert_share(&tally, "b", 30.0, 2.0);
}

#[test]
fn endpoints_of_a_backend_take_turns() {
    let e1 = Backend::start("e1");
    let e2 = Backend::start("e2");
    let e3 = Backend::start("e3");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/svc:80", &[&e1, &e2, &e3])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/rr",
                &[],
                vec![rule(vec![], vec![to("ns/svc:80", 1)])],
            )],
        )
        .build();
    let _proxy = Proxy::start(&config);

    // One connection alone on its core: strict rotation through the three endpoints.
    let mut client = Client::connect(port);
    let order: Vec<String> = (0..30)
        .map(|_| {
            client
                .get("example.com", "/status/200")
                .backend()
                .unwrap()
                .to_string()
        })
        .collect();
    for window in order.windows(3) {
        let mut names = window.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 3, "not a rotation: {order:?}");
    }
    for (i, name) in order.iter().enumerate().skip(3) {
        assert_eq!(name, &order[i - 3], "not a rotation: {order:?}");
    }
    drop(client);

    // Many connections on both cores: every endpoint gets about a third.
    let tally = run_parallel(port, 6, 500);
    assert_eq!(tally.total, 3_000);
    assert_eq!(tally.status(200), 3_000, "{tally:?}");
    for name in ["e1", "e2", "e3"] {
        let share = tally.share(name);
        assert!(
            (25.0..=42.0).contains(&share),
            "{name}: {share:.2}% ({tally:?})"
        );
    }
}

#[test]
fn invalid_share_answers_500_for_its_part() {
    let a = Backend::start("a");
    let port = free_port();
    let _proxy = Proxy::start(&config(
        1,
        port,
        &[&a],
        vec![to("ns/a:80", 50), invalid("BackendNotFound", 50)],
    ));
    let tally = run_parallel(port, 4, 500);
    assert_eq!(tally.total, 2_000);
    assert_eq!(tally.status(200) + tally.status(500), 2_000, "{tally:?}");
    // Every 200 came from the backend, every 500 from the proxy itself.
    assert_eq!(tally.backend("a"), tally.status(200), "{tally:?}");
    assert_eq!(tally.backend("-"), tally.status(500), "{tally:?}");
    assert_eq!(a.request_count() as u64, tally.status(200));
    let share = tally.status_share(500);
    assert!((share - 50.0).abs() <= 4.0, "500s: {share:.2}% ({tally:?})");
}

#[test]
fn pushed_weights_apply_to_new_requests_on_existing_connections() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let port = free_port();
    let proxy = Proxy::start(&config(
        1,
        port,
        &[&a, &b],
        vec![to("ns/a:80", 90), to("ns/b:80", 10)],
    ));

    // Before: 90/10, with a keep-alive connection that stays open across the push.
    let mut kept = Client::connect(port);
    let mut before = run_on(&mut kept, port, 500);
    before.add(run_parallel(port, 3, 500));
    assert_eq!(before.total, 2_000);
    assert_eq!(before.status(200), 2_000, "{before:?}");
    assert_eq!(before.reconnects, 0, "{before:?}");
    assert_share(&before, "a", 90.0, 3.0);

    let reply = proxy.push(&config(
        2,
        port,
        &[&a, &b],
        vec![to("ns/a:80", 10), to("ns/b:80", 90)],
    ));
    assert_eq!(reply, Reply::Ack { generation: 2 });

    // After: the old connection and new ones follow 10/90.
    let on_kept = run_on(&mut kept, port, 1000);
    assert_eq!(on_kept.status(200), 1000, "{on_kept:?}");
    assert_eq!(on_kept.reconnects, 0, "the kept connection was closed");
    assert_share(&on_kept, "b", 90.0, 5.0);
    let mut after = run_parallel(port, 2, 500);
    after.add(on_kept);
    assert_eq!(after.total, 2_000);
    assert_eq!(after.status(200), 2_000, "{after:?}");
    assert_share(&after, "a", 10.0, 3.0);
    assert_share(&after, "b", 90.0, 3.0);
    // The kept connection is still open.
    assert_eq!(kept.get("example.com", "/status/200").status, 200);
}
