//! Helpers shared by the operator's integration tests that run real binaries, and the
//! in-process fake Kubernetes API server ([`fake_api`]) the controller tests run against.

pub mod fake_api;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const PORTCULLIS: &str = env!("CARGO_BIN_EXE_portcullis");

/// `portcullis-proxy` next to `portcullis`; built once if missing (cargo builds the binaries of
/// the package under test only, and the dataplane is merely a dev-dependency here).
pub fn proxy_bin() -> &'static Path {
    static PROXY: OnceLock<PathBuf> = OnceLock::new();
    PROXY.get_or_init(|| {
        let dir = Path::new(PORTCULLIS).parent().unwrap();
        let proxy = dir.join("portcullis-proxy");
        if !proxy.is_file() {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let mut build = Command::new(env!("CARGO"));
            build
                .current_dir(workspace)
                .args(["build", "-p", "portcullis-dataplane", "--bin"])
                .arg("portcullis-proxy");
            if dir.file_name().and_then(|n| n.to_str()) == Some("release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "building portcullis-proxy failed");
            assert!(proxy.is_file(), "{} missing after build", proxy.display());
        }
        proxy
    })
}
