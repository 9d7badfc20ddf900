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
    match parse(std::env::args().skip(1)) {
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

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options::default();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match arg.as_str() {
            "--count" => o.count = number("--count")? as usize,
            "--invalid-every" => o.invalid_every = number("--invalid-every")? as usize,
            "--seed" => o.seed = number("--seed")?,
            "--fifo" => o.fifo = true,
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}
