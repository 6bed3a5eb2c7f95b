//! `portcullis-operator`: the control side of Portcullis.
//!
//! - [`distribute`]: delivering compiled configs to proxies (today: the control-socket client
//!   that the agent, standalone mode and `portcullis push` share).
//! - [`manifests`]: YAML for the objects this project defines (CRDs).

pub mod distribute;
pub mod manifests;
