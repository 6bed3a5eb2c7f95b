//! `portcullis-api`: the contracts between the Portcullis operator and proxy.
//!
//! - [`config`]: the compiled config model, one per Gateway per generation.
//! - [`validate`]: every invariant the proxy relies on, checked the same way on both sides.
//! - [`frame`]: how a config travels over the proxy's control socket.
//! - [`certificate`]: the certificate check both sides apply.
//! - [`cors`]: which origins a CORS filter allows.
//! - [`gateway_api`]: the Gateway API resources (generated from the pinned CRDs).
//! - [`v1alpha1`]: Portcullis's own CRDs.
//!
//! No I/O lives here.

pub mod certificate;
pub mod config;
pub mod cors;
pub mod frame;
pub mod validate;

pub mod gateway_api;
pub mod v1alpha1;

pub use config::CompiledConfig;
