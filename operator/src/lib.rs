//! `portcullis-operator`: the control side of Portcullis.
//!
//! - [`distribute`]: delivering compiled configs to proxies (today: the control-socket client
//!   that the agent, standalone mode and `portcullis push` share).

pub mod distribute;
