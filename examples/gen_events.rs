//! Writes a synthetic SQS batch event (JSON) to stdout, for tests, demos and
//! benchmarks:
//!
//! ```text
//! cargo run --example gen_events -- --count 10000 --invalid-every 20 [--fifo] [--seed 7] > batch.json
//! ```
//!
//! The same arguments and output as `login-etl gen-events` (one definition:
//! `login_etl::cli::GenEventsArgs`). A real event-source mapping caps the
//! payload at 6 MB (about 9,000 of these records).

use clap::Parser;
use login_etl::cli::GenEventsArgs;
use login_etl::synth;

/// gen_events: a synthetic SQS batch event on stdout.
#[derive(Parser)]
#[command(name = "gen_events")]
struct Cli {
    #[command(flatten)]
    args: GenEventsArgs,
}

fn main() {
    let cli = Cli::parse();
    let options = synth::Options::from(&cli.args);
    let event = synth::event(&options);
    println!(
        "{}",
        serde_json::to_string(&event).expect("an SQS event serializes")
    );
    eprintln!("gen_events: wrote {} records", options.count);
}
