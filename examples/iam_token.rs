//! The RDS IAM token login-etl signs (`DB_AUTH=iam`) for a host, port,
//! user and region at a given clock, with the credentials in
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`:
//! what tests/test_iam_token.py compares with botocore's
//! `generate_db_auth_token` at the same clock.
//!
//!     iam_token HOST PORT USER REGION EPOCH_SECONDS

use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use login_etl::database::iam;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, port, user, region, epoch] = args.as_slice() else {
        eprintln!("usage: iam_token HOST PORT USER REGION EPOCH_SECONDS");
        std::process::exit(2);
    };
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) else {
        eprintln!("iam_token: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
        std::process::exit(2);
    };
    let (Ok(port), Ok(epoch)) = (port.parse::<u16>(), epoch.parse::<u64>()) else {
        eprintln!("iam_token: PORT and EPOCH_SECONDS are numbers");
        std::process::exit(2);
    };
    let credentials = Credentials::new(key, secret, var("AWS_SESSION_TOKEN"), None, "environment");
    let at = UNIX_EPOCH + Duration::from_secs(epoch);
    match iam::token(host, port, user, region, credentials, at) {
        Ok(token) => println!("{}", token.as_str()),
        Err(e) => {
            eprintln!("iam_token: {e}");
            std::process::exit(1);
        }
    }
}
