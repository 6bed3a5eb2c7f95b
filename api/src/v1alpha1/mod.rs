//! Portcullis's own resources, group `portcullis.dev`, version `v1alpha1`.

pub mod gateway_parameters;

pub use gateway_parameters::{GatewayParameters, GatewayParametersSpec};

/// Every CRD this project defines, for `portcullis crd` and `make manifests`.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![GatewayParameters::crd()]
}
