//! The config stream's generated protobuf types and tonic client/server
//! (`api/proto/portcullis/config/v1/config.proto`).

#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]

tonic::include_proto!("portcullis.config.v1");
