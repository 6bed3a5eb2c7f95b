//! `portcullis-operator`: the control side of Portcullis.
//!
//! - [`compile`]: Gateway API objects → one CompiledConfig per Gateway, and every status (pure).
//! - [`distribute`]: delivering compiled configs to proxies (today: the control-socket client
//!   that the agent, standalone mode and `portcullis push` share).
//! - [`manifests`]: YAML for the objects this project defines (CRDs).

pub mod compile;
pub mod distribute;
pub mod manifests;
pub mod objects;
