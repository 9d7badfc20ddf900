//! `login-etl password`: one place each database password lives. As the
//! admin (connected as psql connects: the `PG*` variables, `~/.pgpass`),
//! sets a login role's password to the one its RDS-style secret holds,
//! making that secret with a generated password where it is missing; the
//! secret names the host and port connected to (or those given: an RDS
//! Proxy's endpoint), and the database. The server receives only the
//! password's SCRAM-SHA-256 verifier, as psql's `\password` sends it, so
//! neither the statement nor the server's log holds the password, and it
//! is never printed.

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use zeroize::Zeroizing;

use super::PasswordArgs;
use crate::database::{Connector, DbConfig};
use crate::secrets::{DbSecret, Secrets};

/// Characters of a generated password: letters and digits (nothing a
/// shell, a URL or RDS's own rules would quote).
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Length of a generated password: 32 of 62 characters, about 190 bits.
const LENGTH: usize = 32;

/// Runs `login-etl password`: the line it prints names the role and the
/// secret's ARN, never the password.
pub async fn run(args: &PasswordArgs) -> Result<String, String> {
    let db = DbConfig::from_env().map_err(|e| e.to_string())?;
    let aws = crate::secrets::sdk_config().await;
    let secrets = Secrets::new(&aws);
    let mut admin = Connector::from_config(&db, Some(&aws))
        .await
        .map_err(|e| e.to_string())?;
    let (host, port, dbname) = admin.host_port_dbname();
    let client = admin
        .open(admin.connect_timeout())
        .await
        .map_err(|e| e.to_string())?;
    let (password, arn, made) = match secrets
        .string_if_any(&args.secret_id)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(text) => {
            let secret =
                DbSecret::parse(&args.secret_id, &text, true).map_err(|e| e.to_string())?;
            if secret.username != args.role {
                return Err(format!(
                    "secret {} names the role {}, not {}: give each role a secret of its own (--secret-id)",
                    args.secret_id, secret.username, args.role
                ));
            }
            (
                Zeroizing::new(secret.password),
                args.secret_id.clone(),
                false,
            )
        }
        None => {
            if host.starts_with('/') && args.secret_host.is_none() {
                return Err(format!(
                    "the admin connects over the Unix socket {host}, which the function cannot reach: give the host the secret should name with --secret-host (and --secret-port)"
                ));
            }
            let password = generate();
            let text = Zeroizing::new(
                serde_json::json!({
                    "engine": "postgres",
                    "username": args.role,
                    "password": password.as_str(),
                    "host": args.secret_host.as_deref().unwrap_or(&host),
                    "port": args.secret_port.unwrap_or(port),
                    "dbname": dbname,
                })
                .to_string(),
            );
            let arn = secrets
                .create(&args.secret_id, &text)
                .await
                .map_err(|e| e.to_string())?;
            (password, arn, true)
        }
    };
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    client
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD {}",
            escape_identifier(&args.role),
            escape_literal(&verifier)
        ))
        .await
        .map_err(|e| {
            format!(
                "setting the password of {} failed: {}; run as an admin that may ALTER ROLE it (CREATEROLE), after the role is made",
                args.role,
                crate::error::describe(&e)
            )
        })?;
    Ok(format!(
        "{}: password set from secret {arn}{}",
        args.role,
        if made { " (made now, generated)" } else { "" }
    ))
}

/// A new random password of [`LENGTH`] characters of [`ALPHABET`].
fn generate() -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(LENGTH));
    let mut byte = [0u8; 1];
    while out.len() < LENGTH {
        OsRng.fill_bytes(&mut byte);
        // Rejection sampling: 248 is the largest multiple of 62 below 256.
        if byte[0] < 248 {
            out.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_generated_password_is_letters_and_digits_and_new_each_time() {
        let a = super::generate();
        let b = super::generate();
        assert_eq!(a.len(), super::LENGTH);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(*a, *b);
    }
}
