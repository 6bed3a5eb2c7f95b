//! The sample manifests under `config/samples/` that need no generated Secret compile without
//! a problem, so the README's pointers stay true.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use portcullis_operator::compile::{Output, compile};
use portcullis_operator::objects::load_paths;
use portcullis_operator::status_table::rows;

/// Compiles `config/samples/<name>`, asserting every document was read and no row has a
/// problem.
fn compile_cleanly(name: &str) -> Output {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/samples")
        .join(name);
    let loaded = load_paths(&[dir]).unwrap();
    assert!(loaded.ignored.is_empty(), "{:?}", loaded.ignored);
    let output = compile(&loaded.input);
    let problems: Vec<String> = rows(&output)
        .iter()
        .filter(|r| !r.is_ok())
        .map(|r| r.key.clone())
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
    output
}

#[test]
fn the_stream_sample_compiles_cleanly() {
    let output = compile_cleanly("stream");
    assert_eq!(output.tls_routes.len(), 1);
    assert_eq!(output.tcp_routes.len(), 1);
    let config = output
        .gateways
        .values()
        .next()
        .unwrap()
        .config
        .as_ref()
        .unwrap();
    assert_eq!(config.ports.len(), 2, "both listeners are served");
}

#[test]
fn the_listener_set_sample_compiles_cleanly() {
    let output = compile_cleanly("listenerset");
    let gateway = output.gateways.values().next().unwrap();
    assert_eq!(gateway.attached_listener_sets, 1);
    let config = gateway.config.as_ref().unwrap();
    let listeners: Vec<&str> = config.ports[0]
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(
        listeners,
        ["http", "shop/shop/storefront"],
        "one port, both hostnames"
    );
}
