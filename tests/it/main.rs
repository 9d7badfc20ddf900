//! The integration tests, in one binary: one link instead of nineteen,
//! and `tests/common` compiled once (the build of `make test` is on its
//! critical path). Each file is a module named as it was; `make test` runs
//! them with cargo-nextest, each test in a process of its own, so the
//! tests that set environment variables (AWS endpoints: moto) set them for
//! themselves alone (`common::set_process_env`). One module:
//! `cargo nextest run --test it -E 'test(/^rotation::/)'`.

#[path = "../common/mod.rs"]
mod common;

mod backoff_sqs;
mod dlq_sqs;
mod doctor_tampered;
mod erasure;
mod failure_classes;
mod faults;
mod handler_postgres;
mod hostile_input;
mod iam_auth;
mod insiders;
mod log_levels;
mod narrow_row;
mod partitions;
mod pii_logs;
mod pooler;
mod profiles;
mod replication;
mod rotation;
mod rotation_races;
mod round_trips;
mod runtime_e2e;
mod secrets_aws;
mod setup_queue;
mod stalls;
mod tls_postgres;
mod traces;
mod vault_kms;
