//! Transforms a generated 10,000-record batch a few times: the workload to
//! profile per-record cost with `valgrind --tool=callgrind` (see
//! docs/performance.md).

use login_etl::ingest::record;
use login_etl::privacy::masking::{Masker, MaskingKey};
use login_etl::synth::{self, Options};

fn main() {
    let key = MaskingKey::from_hex(&"8f2c7e4a1b9d3f6e".repeat(4), "profile").expect("a valid key");
    let masker = Masker::new(&key);
    let batch = login_etl::SqsBatch::from(&synth::event(&Options {
        count: 10_000,
        ..Options::default()
    }));
    let mut checksum = 0u64;
    for _ in 0..60 {
        for m in batch.records() {
            let row = record::transform(m.message_id.as_deref().unwrap_or(""), m, &masker)
                .expect("generated records are valid");
            checksum = checksum.wrapping_add(row.masked_ip.as_str().as_bytes()[0] as u64);
        }
    }
    println!("{checksum}");
}
