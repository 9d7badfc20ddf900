//! Per-record transform cost on one core: parse + validate + mask + encode,
//! on realistic generated bodies. `make bench` reports records/s.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use login_etl::contract::parse_body;
use login_etl::ingest::record;
use login_etl::privacy::masking::{Masker, MaskingKey};
use login_etl::synth::{self, Options};

const KEY: &str = "8f2c7e4a1b9d3f6e0a5c8b2d7f4e1a9c3b6d0f8e2a5c7b9d1f4e6a8c0b2d4f6e";

fn transform(c: &mut Criterion) {
    let masker = Masker::new(&MaskingKey::from_hex(KEY, "bench").unwrap());
    let n = 10_000;
    let event = login_etl::SqsBatch::from(&synth::event(&Options {
        count: n,
        ..Options::default()
    }));
    let ids: Vec<&str> = event
        .records()
        .map(|m| m.message_id.as_deref().unwrap())
        .collect();

    let mut g = c.benchmark_group("per_record");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("transform (parse+validate+mask+encode)", |b| {
        b.iter(|| {
            for (m, id) in event.records().zip(&ids) {
                black_box(record::transform(id, m, &masker).unwrap());
            }
        })
    });
    g.bench_function("parse+validate only", |b| {
        b.iter(|| {
            for m in event.records() {
                black_box(parse_body(m.body.as_deref().unwrap()).unwrap());
            }
        })
    });
    // The handler's one check of every record before it judges its
    // claims (a signature newer than the batch's key version).
    g.bench_function("claims' key version (signed_after)", |b| {
        b.iter(|| {
            for m in event.records() {
                black_box(record::signed_after(m, &masker));
            }
        })
    });
    let parsed: Vec<_> = event
        .records()
        .map(|m| parse_body(m.body.as_deref().unwrap()).unwrap())
        .collect();
    g.bench_function("mask only (2 HMACs)", |b| {
        b.iter(|| {
            for e in &parsed {
                black_box((
                    e.ip.as_ref().map(|ip| masker.ip(ip)),
                    e.device_id.as_deref().map(|d| masker.device_id(d)),
                ));
            }
        })
    });
    g.finish();
}

/// The EMF summary document a batch writes (built and serialized; the
/// line goes nowhere).
fn emf(c: &mut Criterion) {
    use login_etl::ingest::metrics::{InvocationMetrics, Metrics};
    let metrics = Metrics::new("LoginEtl", "login-etl", "login-etl").with_output(|line: &str| {
        black_box(line);
    });
    let batch = InvocationMetrics {
        summary: login_etl::BatchSummary {
            received: 10,
            inserted: 10,
            statements: 1,
            ..Default::default()
        },
        duration_ms: 1,
        ingest_lag_ms: Some(5),
        ..InvocationMetrics::default()
    };
    let mut g = c.benchmark_group("per_batch");
    g.bench_function("EMF summary document (build + serialize)", |b| {
        b.iter(|| metrics.emit(black_box(&batch), 1_795_600_000_000))
    });
    g.finish();
}

criterion_group!(benches, transform, emf);
criterion_main!(benches);
