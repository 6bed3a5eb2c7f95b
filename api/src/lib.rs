//! `portcullis-api`: the contracts between the Portcullis operator and proxy.
//!
//! - [`config`]: the compiled config model, one per Gateway per generation.
//! - [`validate`]: every invariant the proxy relies on, checked the same way on both sides.
//! - [`frame`]: how a config travels over the proxy's control socket.
//!
//! No I/O lives here.

pub mod config;
pub mod frame;
pub mod validate;

pub use config::CompiledConfig;
pub mod gateway_api;
