//! `login-etl password`: one place each database password lives. As the
//! admin (connected as psql connects: the `PG*` variables, `~/.pgpass`),
//! sets a login role's password to the one its RDS-style secret holds,
//! making that secret with a generated password where it is missing; the
//! secret names the host and port connected to (or those given: an RDS
//! Proxy's endpoint), and the database. The server receives only the
//! password's SCRAM-SHA-256 verifier, as psql's `\password` sends it, so
//! neither the statement nor the server's log holds the password, and it
//! is never printed.
//!
//! Each secret it makes gets a resource policy ([`policy`]) before its
//! password is put in it: nobody reads it but the admin and the principals
//! named. An existing secret is adopted only when it names this server's
//! host and database and carries that policy for those principals alone;
//! otherwise the command says what differs and changes nothing
//! (`--new-password` puts the policy on it, then a new password).

pub(super) mod policy;

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use zeroize::Zeroizing;

use super::PasswordArgs;
use crate::database::connector::Connector;
use crate::database::settings::DbConfig;
use crate::error::SecretError;
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
    let admin = Admin::connect(&db, &aws, None, Vec::new()).await?;
    Ok(admin.set_password(args).await?.line)
}

/// The admin's side of `password` (and of `setup`): a connection that may
/// ALTER ROLE, the server it reaches, and who runs it (named by STS).
pub struct Admin {
    /// The admin's connection.
    pub client: tokio_postgres::Client,
    host: String,
    port: u16,
    dbname: String,
    secrets: Secrets,
    caller: String,
    /// Run by a stack's setup resource (its role given, not asked of STS).
    stack_setup: bool,
    /// The AWS configuration (a CA bundle in a secret, IAM).
    aws: aws_config::SdkConfig,
    /// Who besides this admin may rewrite a secret's policy or delete it
    /// (a stack's `DeployPrincipalArns`); empty: IAM decides.
    rewriters: Vec<String>,
}

/// What [`Admin::set_password`] did: the secret's ARN and the line to print.
pub struct PasswordSet {
    /// The ARN of the role's secret.
    pub arn: String,
    /// `<role>: password set from secret <arn>`, and whether it was generated now.
    pub line: String,
}

impl Admin {
    /// The AWS account of whoever runs setup (from its ARN), where known.
    pub fn account(&self) -> &str {
        self.caller.split(':').nth(4).unwrap_or_default()
    }

    /// The host and port the admin connected to.
    pub fn address(&self) -> (String, u16) {
        (self.host.clone(), self.port)
    }

    /// Connects as the admin `db` names; who runs this is `caller` (an IAM
    /// principal's ARN) where known, else STS says.
    pub async fn connect(
        db: &DbConfig,
        aws: &aws_config::SdkConfig,
        caller: Option<String>,
        rewriters: Vec<String>,
    ) -> Result<Self, String> {
        let mut admin = Connector::from_config(db, Some(aws))
            .await
            .map_err(|e| e.to_string())?;
        let (host, port, dbname) = admin.host_port_dbname();
        let client = admin
            .open(admin.connect_timeout())
            .await
            .map_err(|e| e.to_string())?;
        let stack_setup = caller.is_some();
        let caller = match caller {
            Some(arn) => arn,
            None => aws_sdk_sts::Client::new(aws)
                .get_caller_identity()
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "asking STS who runs this failed ({}): the secret's resource policy names the admin's role; check the AWS credentials",
                        aws_sdk_sts::error::DisplayErrorContext(&e)
                    )
                })?
                .arn
                .ok_or("STS named no caller ARN")?,
        };
        Ok(Self {
            client,
            host,
            port,
            dbname,
            secrets: Secrets::new(aws),
            caller,
            stack_setup,
            aws: aws.clone(),
            rewriters,
        })
    }

    /// Whether `password` logs in as `role` on the admin's server (its
    /// host, port and database; TLS as the environment sets it, a CA
    /// bundle in a secret included). `false` only where the server refused
    /// the login; any other failure (a timeout, TLS, a full server) is the
    /// error, so that it never renews a password by itself.
    async fn logs_in(&self, role: &str, password: &str) -> Result<bool, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let port = self.port.to_string();
        let db = DbConfig::from_lookup(&|name: &str| match name {
            "PGHOST" => Some(self.host.clone()),
            "PGPORT" => Some(port.clone()),
            "PGDATABASE" => Some(self.dbname.clone()),
            "PGUSER" => Some(role.to_owned()),
            "PGPASSWORD" => Some(password.to_owned()),
            "DATABASE_URL" | "DB_SECRET_ID" | "DB_AUTH" | "PGPASSFILE" | "DB_CONNECT_HOST"
            | "DB_CONNECT_PORT" => None,
            _ => env(name),
        });
        let db = db.map_err(|e| e.to_string())?;
        let mut connector = Connector::from_config(&db, Some(&self.aws))
            .await
            .map_err(|e| e.to_string())?;
        let limit = connector.connect_timeout();
        match connector.open(limit).await {
            Ok(_) => Ok(true),
            Err(crate::error::DbError::ConnectRefused { .. }) => Ok(false),
            Err(e) => Err(format!(
                "checking that {role}'s stored password logs in failed ({e}); nothing was changed: run again once the server answers"
            )),
        }
    }

    /// Whether `id`'s policy is one an earlier stack of this name's setup
    /// put: it names a setup role of this account whose name is this
    /// setup's but for CloudFormation's random suffix.
    async fn an_earlier_stacks(&self, id: &str) -> bool {
        let Ok(Some(text)) = self.secrets.resource_policy(id).await else {
            return false;
        };
        policy::protects(&text).is_ok_and(|(stacks, named)| {
            !stacks
                && named
                    .iter()
                    .any(|n| policy::same_stacks_setup_role(n, &self.caller))
        })
    }

    /// Sets `args.role`'s password to the one its secret holds, making the
    /// secret where it is missing (the module's documentation).
    pub async fn set_password(&self, args: &PasswordArgs) -> Result<PasswordSet, String> {
        let Self {
            client,
            host,
            port,
            dbname,
            secrets,
            caller,
            stack_setup,
            rewriters,
            ..
        } = self;
        let (host, port) = (host.clone(), *port);
        let mut principals = policy::principal_of(caller);
        principals.extend(args.reader_arn.iter().cloned());
        // Where rewriters are named, this admin stays one of them (an
        // update's setup puts the policy again).
        let rewriters: Vec<String> = match rewriters.is_empty() {
            true => Vec::new(),
            false => rewriters
                .iter()
                .cloned()
                .chain(policy::principal_of(caller))
                .collect(),
        };
        let only = policy::only(&principals, &rewriters);
        let want_host = args.secret_host.clone().unwrap_or_else(|| host.clone());
        let want_port = args.secret_port.unwrap_or(port);
        let secret_text = |password: &str| {
            Zeroizing::new(
                serde_json::json!({
                    "engine": "postgres",
                    "username": args.role,
                    "password": password,
                    "host": want_host,
                    "port": want_port,
                    "dbname": dbname,
                })
                .to_string(),
            )
        };
        let id = &args.secret_id;
        let named = principals.join(", ");
        // The policy first, then a new password: nobody else ever reads it.
        let renew = |id: String| {
            let (secrets, only, secret_text) = (&secrets, &only, &secret_text);
            async move {
                secrets
                    .put_resource_policy(&id, only)
                    .await
                    .map_err(|e| e.to_string())?;
                let password = generate();
                let arn = secrets
                    .put_string(&id, &secret_text(&password))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((password, arn))
            }
        };
        let read = secrets.string_if_any(id).await;
        // A stack's setup denied its own stack's secret: an earlier stack of
        // this name made it (a stack deleted and made again, a first create
        // tried again), whose policy names that stack's setup role. Taken
        // over as a new one is made: today's policy, then a new password.
        let taken_over = match &read {
            Err(SecretError::AccessDenied { .. })
                if *stack_setup && self.an_earlier_stacks(id).await =>
            {
                Some(renew(id.clone()).await.map_err(|e| {
                    format!(
                        "secret {id} was made by an earlier stack of this name, and this stack's setup could not take it over ({e}); where DeployPrincipalArns was given, only those roles may rewrite its policy: delete it as one of them (aws secretsmanager delete-secret --force-delete-without-recovery --secret-id {id}) and deploy again"
                    )
                })?)
            }
            _ => None,
        };
        let (password, arn, made) = if let Some((password, arn)) = taken_over {
            (password, arn, true)
        } else {
            match read.map_err(|e| match e {
                SecretError::AccessDenied { id, code } if *stack_setup => format!(
                    "reading secret {id} was denied ({code}) to this stack's setup ({caller}), and its policy is no earlier stack's of this name (it names no setup role of this stack's name, or could not be read: the template grants the setup role secretsmanager:GetResourcePolicy on <stack>/*): whoever made it may know its password; nothing was changed. Delete it (aws secretsmanager delete-secret --force-delete-without-recovery --secret-id {id}) and deploy again, or deploy under another stack name"
                ),
                SecretError::AccessDenied { id, code } => format!(
                    "reading secret {id} was denied ({code}) to {caller}: a secret the stack protects (ProtectDbSecret) is readable by the function's role and DbSecretReaderPrincipalArns alone, and one login-etl made by the principals it named: add this admin's role to DbSecretReaderPrincipalArns and deploy, or run this as a principal the secret's policy names"
                ),
                other => other.to_string(),
            })? {
                Some((text, arn)) => {
                    let secret = DbSecret::parse(id, &text, false).map_err(|e| e.to_string())?;
                    if secret.username != args.role {
                        return Err(format!(
                            "secret {id} names the role {}, not {}: give each role a secret of its own (--secret-id)",
                            secret.username, args.role
                        ));
                    }
                    let policy_text = secrets.resource_policy(id).await.map_err(|e| e.to_string())?;
                    // A stack's setup keeps a password only where its own role
                    // made the secret (the policy names it): any other (an
                    // earlier stack of that name, someone else's) gets a new
                    // one, and the policy names today's principals.
                    let names_me = policy_text
                        .as_deref()
                        .and_then(|p| policy::protects(p).ok())
                        .is_some_and(|(_, named)| named.iter().any(|n| n == caller));
                    let moved = secret.host != want_host || secret.port != want_port;
                    // A stack's own secret follows DbProxyHost/DbProxyPort (set or
                    // cleared on an update): the same password, the new address.
                    let follows_the_stack = *stack_setup && names_me && secret.dbname == *dbname;
                    if (moved || secret.dbname != *dbname) && !follows_the_stack && *stack_setup {
                        return Err(format!(
                            "secret {id} names {}:{} database {}, not {want_host}:{want_port} database {dbname}, and this stack's setup may not move it (its policy does not name {caller}, or it names another database); nothing was changed. If it is an earlier stack's of this name for another server, delete it (aws secretsmanager delete-secret --force-delete-without-recovery --secret-id {id}: a secret pending deletion cannot be read or made again) and update the stack again, or deploy under another stack name",
                            secret.host, secret.port, secret.dbname
                        ));
                    }
                    if (moved || secret.dbname != *dbname) && !follows_the_stack {
                        return Err(format!(
                            "secret {id} names {}:{} database {}, not {want_host}:{want_port} database {dbname}; nothing was changed. If it was made for a proxy's endpoint, give the same --secret-host and --secret-port; if it was made for another server (or by someone else), give this role a secret of its own (--secret-id), or delete that one and run again",
                            secret.host, secret.port, secret.dbname
                        ));
                    }
                    let found = match &policy_text {
                        Some(p) => policy::check(p, &principals),
                        None => Err("it has no resource policy: anyone in the account allowed secretsmanager:GetSecretValue on * reads it".into()),
                    };
                    if *stack_setup {
                        // Kept only where the password also logs in as the role:
                        // a policy naming this setup is anyone's to write on a
                        // secret they made first (and they know its password);
                        // the role's password is this setup's alone to set.
                        if names_me
                            && !secret.password.is_empty()
                            && self.logs_in(&args.role, &secret.password).await?
                        {
                            secrets
                                .put_resource_policy(id, &only)
                                .await
                                .map_err(|e| e.to_string())?;
                            if moved {
                                secrets
                                    .put_string(id, &secret_text(&secret.password))
                                    .await
                                    .map_err(|e| e.to_string())?;
                            }
                            (Zeroizing::new(secret.password), arn.clone(), false)
                        } else {
                            let (password, arn) = renew(arn.clone()).await?;
                            (password, arn, true)
                        }
                    } else {
                        match found {
                            // A run stopped between the policy and the password: finished now.
                            Ok(policy::PolicyKind::Ours(_)) if secret.password.is_empty() => {
                                let (password, arn) = renew(arn.clone()).await?;
                                (password, arn, true)
                            }
                            Ok(policy::PolicyKind::Ours(had)) => {
                                // A --reader-arn not named yet: the policy widened to it.
                                if principals.iter().any(|p| !had.contains(p)) {
                                    secrets
                                        .put_resource_policy(id, &only)
                                        .await
                                        .map_err(|e| e.to_string())?;
                                }
                                (Zeroizing::new(secret.password), arn.clone(), false)
                            }
                            Ok(policy::PolicyKind::Stacks) if args.new_password => {
                                return Err(format!(
                                    "secret {id} is protected by its stack (ProtectDbSecret), whose function reads it: --new-password would take it from the function; nothing was changed. Rotate it with Secrets Manager, or run without --new-password"
                                ));
                            }
                            Ok(policy::PolicyKind::Stacks) => (Zeroizing::new(secret.password), arn.clone(), false),
                            Ok(policy::PolicyKind::Setup) if args.new_password => {
                                return Err(format!(
                                    "secret {id} was made by its stack's setup, whose functions read it: --new-password would take it from them; nothing was changed. Update the stack to renew it, or run without --new-password"
                                ));
                            }
                            // A stack's setup made it, as its policy says: an admin
                            // reads it as it is, once its password is shown to log
                            // in as the role (a policy is anyone's to write; the
                            // role's password is not).
                            Ok(policy::PolicyKind::Setup) => {
                                if !self.logs_in(&args.role, &secret.password).await? {
                                    return Err(format!(
                                        "secret {id} carries a stack's setup policy, but its password does not log in as {}: whoever made it may know it; nothing was changed. Update the stack (its setup renews the secret), or delete the secret and run again",
                                        args.role
                                    ));
                                }
                                (Zeroizing::new(secret.password), arn.clone(), false)
                            }
                            Err(why) if !args.new_password => {
                                return Err(format!(
                                    "secret {id} is not adopted: {why}, and whoever made it may know its password; nothing was changed. Run again with --new-password (the policy naming {named} is put on it, then a new password), or delete it and run again"
                                ));
                            }
                            Err(_) => {
                                let (password, arn) = renew(arn.clone()).await?;
                                (password, arn, true)
                            }
                        }
                    }
                }
                None => {
                    if host.starts_with('/') && args.secret_host.is_none() {
                        return Err(format!(
                            "the admin connects over the Unix socket {host}, which the function cannot reach: give the host the secret should name with --secret-host (and --secret-port)"
                        ));
                    }
                    // Made without the password, which goes in once the policy is
                    // on (a run stopped in between is finished by the next).
                    let arn = secrets
                        .create(id, &secret_text(""))
                        .await
                        .map_err(|e| e.to_string())?;
                    let (password, arn) = renew(arn).await?;
                    (password, arn, true)
                }
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
                    "setting the password of {} failed: {}; run as an admin that may ALTER ROLE it (CREATEROLE), after the role is made{}",
                    args.role,
                    crate::error::describe(&e),
                    if made {
                        " (the secret holds its new password already: run this again, without --new-password, to set it)"
                    } else {
                        ""
                    }
                )
            })?;
        let line = format!(
            "{}: password set from secret {arn}{}",
            args.role,
            if made { " (generated now)" } else { "" }
        );
        Ok(PasswordSet { arn, line })
    }
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
