//! `portcullis-operator`: the control side of Portcullis.
//!
//! - [`compile`]: Gateway API objects → one CompiledConfig per Gateway, and every status (pure).
//! - [`distribute`]: delivering compiled configs to proxies (today: the control-socket client
//!   that the agent, standalone mode and `portcullis push` share).
//! - [`provision`]: the ServiceAccount, Deployment and Service rendered for each Gateway.
//! - [`manifests`]: YAML for the objects this project defines (CRDs).
//! - [`check`] and [`standalone`]: the `portcullis check` and `portcullis standalone`
//!   commands, sharing [`status_table`] to print statuses.

pub mod check;
pub mod compile;
pub mod controller;
pub mod distribute;
pub mod manifests;
pub mod objects;
pub mod operator;
pub mod provision;
pub mod rbac;
pub mod standalone;
pub mod status_table;
pub mod telemetry;
