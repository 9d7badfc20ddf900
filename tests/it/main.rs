//! The integration tests that leave the process's environment alone, in
//! one binary: one link instead of fourteen, and `tests/common` compiled
//! once (the build of `make test` is on its critical path). Each file is a
//! module named as it was; `make test` runs them in three streams by
//! module (`cargo test --test it -- rotation::`). The tests that set
//! environment variables (AWS endpoints, TLS settings) keep binaries of
//! their own: a variable set by one would reach every test of a shared
//! process.

#[path = "../common/mod.rs"]
mod common;

mod dlq_sqs;
mod erasure;
mod failure_classes;
mod faults;
mod handler_postgres;
mod hostile_input;
mod insiders;
mod log_levels;
mod partitions;
mod pooler;
mod profiles;
mod replication;
mod rotation;
mod rotation_races;
mod runtime_e2e;
mod stalls;
