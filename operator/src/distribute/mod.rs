//! Getting a compiled config into a running proxy.

pub mod agent;
pub mod ca;
pub mod control_client;
pub mod gzip;
pub mod hub;
pub mod proto;
pub mod server;
