//! Every integration suite, as modules of one test binary (one link of the
//! crate instead of one per suite). Run one suite with
//! `cargo test --test it gateway::`; the slow ones are `#[ignore]`d:
//! `cargo test --test it slow:: -- --ignored`.

mod client_ip;
mod common;
mod console;

mod dynamodb;
mod failover;
mod gateway;
mod hardening;
mod lambda_events;
mod lambda_runtime;
mod module_graph;
mod properties;
mod slow;
mod spend;
mod ssm;
mod tls;
mod upstream;
