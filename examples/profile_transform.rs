//! The client's per-record work on a generated 10,000-record batch, a few
//! times over: the workload to profile with `perf record` or
//! `valgrind --tool=callgrind` (see docs/performance.md).
//!
//! Without an argument, the transform alone (records already parsed); with
//! `event`, the whole path from the payload's bytes as the function reads
//! them: each message read from the payload, then transformed.

use login_etl::ingest::record;
use login_etl::privacy::masking::{Masker, MaskingKey};
use login_etl::synth::{self, Options};

fn main() {
    let from_json = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("event") => true,
        Some(other) => {
            eprintln!("profile_transform: unknown mode {other:?}; give none or `event`");
            std::process::exit(2);
        }
    };
    let key = MaskingKey::from_hex(&"8f2c7e4a1b9d3f6e".repeat(4), "profile").expect("a valid key");
    let masker = Masker::new(&key);
    let mut event = synth::event(&Options {
        count: 10_000,
        ..Options::default()
    });
    // As SQS delivers it: without the generator's `expect` attribute.
    event
        .records
        .iter_mut()
        .for_each(|m| m.message_attributes.clear());
    let json = serde_json::to_vec(&event).expect("an event serializes");
    let parsed = login_etl::SqsBatch::from(&event);
    let mut checksum = 0u64;
    for _ in 0..60 {
        let read;
        let batch = if from_json {
            read = login_etl::SqsBatch::from_payload(bytes::Bytes::from(json.clone()))
                .expect("a generated event reads");
            &read
        } else {
            &parsed
        };
        for m in batch.records() {
            let row = record::transform(m.message_id.as_deref().unwrap_or(""), m, &masker)
                .expect("generated records are valid");
            checksum = checksum
                .wrapping_add(row.masked_ip.expect("an address").as_str().as_bytes()[0] as u64);
        }
    }
    println!("{checksum}");
}
