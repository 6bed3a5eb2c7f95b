//! Getting a compiled config into a running proxy.

pub mod control_client;
pub mod hub;
