//! Writes a synthetic SQS batch event (JSON) to stdout, for tests, demos and
//! benchmarks:
//!
//! ```text
//! cargo run --example gen_events -- --count 10000 --invalid-every 20 [--fifo] [--seed 7] > batch.json
//! ```
//!
//! Same arguments, same output. A real event-source mapping caps the payload
//! at 6 MB (about 9,000 of these records).

use std::process::ExitCode;

use login_etl::synth::{self, Options};

const USAGE: &str = "usage: gen_events [--count N] [--invalid-every N] [--fifo] [--seed N]";

fn main() -> ExitCode {
    match Options::from_args(std::env::args().skip(1)) {
        Ok(options) => {
            let event = synth::event(&options);
            println!(
                "{}",
                serde_json::to_string(&event).expect("an SQS event serializes")
            );
            eprintln!("gen_events: wrote {} records", options.count);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen_events: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
