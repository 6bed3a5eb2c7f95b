//! End-to-end tests for Portcullis. They talk to the cluster named by `KUBECONFIG` and never
//! start one themselves; `make e2e` brings a cluster up first. The scenarios land with the
//! local-cluster issue; until then this crate only reserves its place in the workspace.
