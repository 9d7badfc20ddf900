//! Error types. None of them ever carries a record value, a password or the
//! masking key: messages name variables, fields and SQLSTATEs only.

#[cfg(feature = "service")]
use lambda_runtime::Diagnostic;

/// A setting is missing or malformed; stops the cold start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{var} is not set: {hint}")]
    Missing {
        /// The environment variable.
        var: &'static str,
        /// What to set instead.
        hint: &'static str,
    },
    /// A variable is set to something unusable.
    #[error("{var} is invalid: {reason}")]
    Invalid {
        /// The environment variable.
        var: &'static str,
        /// Why, without echoing the value.
        reason: String,
    },
    /// Two variables that exclude each other are both set.
    #[error("both {first} and {second} are set: set only one of them")]
    Conflict {
        /// One variable.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// A secret given in plain text in a deployed Lambda function's
    /// environment, which `lambda:GetFunctionConfiguration` shows to anyone
    /// allowed to call it.
    #[error(
        "{var} is set in the Lambda function's environment, where anyone allowed lambda:GetFunctionConfiguration reads it: store the value in Secrets Manager, set {instead} to its id and remove {var} (template.yaml does this; {var} is for local runs only)"
    )]
    SecretInLambdaEnvironment {
        /// The variable.
        var: &'static str,
        /// The variable naming a secret instead.
        instead: &'static str,
    },
    /// The masking key is not hex.
    #[error("the masking key from {origin} is not hex; generate one with `openssl rand -hex 32`")]
    MaskingKeyNotHex {
        /// Where the key came from (a variable or a secret id).
        origin: String,
    },
    /// The masking key is shorter than 32 bytes.
    #[error(
        "the masking key from {origin} has {bytes} bytes but at least 32 are required; generate one with `openssl rand -hex 32`"
    )]
    MaskingKeyTooShort {
        /// Where the key came from.
        origin: String,
        /// Its length.
        bytes: usize,
    },
    /// A key document (several versions) is malformed.
    #[error(
        "the key document from {origin} is not usable: {reason}; expected one hex key, or {{\"versions\": [\"<hex key 1>\", \"<hex key 2>\", ...]}} with the newest last (docs/runbooks/leaked-key.md, \"The masking key leaked\")"
    )]
    KeyDocument {
        /// Where the document came from.
        origin: String,
        /// What is wrong with it (never a key).
        reason: String,
    },
}

/// A secret could not be read or is unusable. Names the secret id, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No secret with that id (or not in this region).
    #[error(
        "secret {id} was not found in Secrets Manager; check the id or ARN and the region (AWS_REGION)"
    )]
    NotFound {
        /// The secret id.
        id: String,
    },
    /// The function's role may not read it.
    #[error(
        "reading secret {id} was denied ({code}); the function's role needs secretsmanager:GetSecretValue on it (and kms:Decrypt if it uses a customer-managed key)"
    )]
    AccessDenied {
        /// The secret id.
        id: String,
        /// The AWS error code.
        code: String,
    },
    /// Secrets Manager did not answer in time or could not be reached.
    #[error(
        "cannot reach Secrets Manager to read secret {id}: {cause}; check the network path (VPC endpoint or NAT) and AWS_ENDPOINT_URL"
    )]
    Unreachable {
        /// The secret id.
        id: String,
        /// What the SDK reported.
        cause: String,
    },
    /// Any other refusal by the service.
    #[error("Secrets Manager refused to return secret {id}: {code}: {message}")]
    Service {
        /// The secret id.
        id: String,
        /// The AWS error code.
        code: String,
        /// The AWS error message.
        message: String,
    },
    /// The secret is binary.
    #[error("secret {id} has no SecretString; store the value as a string")]
    NotAString {
        /// The secret id.
        id: String,
    },
    /// The database secret is not JSON.
    #[error(
        "secret {id} is not JSON; expected an RDS-style secret with username, password, host, port and dbname"
    )]
    NotJson {
        /// The secret id.
        id: String,
    },
    /// The database secret lacks a field or has an unusable one.
    #[error(
        "secret {id} has no usable `{field}`; expected an RDS-style secret with username, password, host, port and dbname"
    )]
    MissingField {
        /// The secret id.
        id: String,
        /// The JSON field.
        field: &'static str,
    },
}

impl SecretError {
    /// True when trying again later can succeed without a human.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SecretError::Unreachable { .. } | SecretError::Service { .. }
        )
    }
}

/// A database operation that failed, not about one row: the batch's write
/// (it fails the invocation, so the event-source mapping redelivers the
/// batch), `migrate`, `maintain` and the operator commands alike. Each
/// names its operation (`op`); whether it is worth trying again is
/// [`is_retryable`](Self::is_retryable), from the one SQLSTATE
/// classification (`database::sqlstate`). It lives here, not in
/// `database/`, because the batch's error ([`HandlerError`]) carries it and
/// is built without the "service" feature, which `database/` needs.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be opened.
    #[error(
        "cannot connect to PostgreSQL at {target}: {cause}; check that the server is running and reachable from where login-etl runs and that the credentials are right"
    )]
    Connect {
        /// `user@host:port/dbname`, never the password.
        target: String,
        /// What went wrong (no row values).
        cause: String,
    },
    /// The connection broke, timed out, or the server was overloaded, or
    /// another transaction was in the way: not the data, and not the
    /// configuration. Whoever asked decides whether to try again (the
    /// function's batch is redelivered; a command says so itself).
    #[error(
        "PostgreSQL failed while {op} (transient: the connection, the server or another transaction, not the data; the same operation can succeed when tried again): {cause}"
    )]
    Transient {
        /// What was being done.
        op: &'static str,
        /// What went wrong (no row values).
        cause: String,
    },
    /// Other transactions kept getting in the way (serialization
    /// failures, deadlocks, lock or statement timeouts), each tried again
    /// on the same connection: the batch's write gave up for now.
    #[error(
        "PostgreSQL kept refusing while {op}: other transactions were in the way (serialization failures, deadlocks, lock or statement timeouts), each tried again; the same operation can succeed later: {cause}"
    )]
    Conflicts {
        /// What was being done.
        op: &'static str,
        /// The last conflict (no row values).
        cause: String,
    },
    /// The connection was refused for a reason a human must fix: by the
    /// server (no such database or role, wrong password, no CONNECT
    /// privilege) or by login-etl (a setting the role stored for itself).
    #[error("the connection to PostgreSQL at {target} was refused: {cause}; {hint}")]
    ConnectRefused {
        /// `user@host:port/dbname`, never the password.
        target: String,
        /// What the server said (no row values).
        cause: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// Too little of the invocation is left to try again: the batch is
    /// returned for redelivery before Lambda would kill the invocation.
    #[error(
        "stopped {op} with {left_ms} ms of the invocation left, to report the failure before the timeout; the batch will be retried (raise the function timeout if this repeats)"
    )]
    Deadline {
        /// What was about to be done.
        op: &'static str,
        /// Milliseconds left until the invocation's deadline.
        left_ms: u64,
    },
    /// The database secret could not be refetched after a password rejection.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The batch was prepared with an erasure list or a masking-key version
    /// that changed since (`login-etl forget`, `login-etl rotate-key`): the
    /// transaction was refused with nothing written; the handler reloads
    /// both, re-keys and filters the batch, and writes it again.
    #[error(
        "the erasure list or the masking-key version changed while the batch was written; nothing was written (the handler reloads them and writes the batch again)"
    )]
    BatchOutdated,
    /// A refusal the deployment's configuration causes, not the database's
    /// health: the function's keys behind the database's key version or
    /// not the ones stored under, a schema not migrated, a missing grant.
    /// Its own failure class (metrics, alarms), so that on-call looks at
    /// the secret, the migration or the grants instead of the database.
    #[error("PostgreSQL refused {op}: {cause}{hint}")]
    Misconfigured {
        /// Which part of the configuration.
        what: Misconfiguration,
        /// What was being done.
        op: &'static str,
        /// What went wrong (no row values).
        cause: String,
        /// What to do about it (starts with "; ").
        hint: std::borrow::Cow<'static, str>,
    },
    /// What the database's profile has not (docs/profiles.md): refused by
    /// login-etl before anything changed, not by PostgreSQL.
    #[error("login-etl refused {op}: {cause}{hint}")]
    Profile {
        /// What was asked.
        op: &'static str,
        /// Why the profile has it not.
        cause: String,
        /// What to do about it (starts with "; ").
        hint: std::borrow::Cow<'static, str>,
    },
    /// A failure that retrying will not fix (missing table, permissions, ...).
    #[error("PostgreSQL refused {op}: {cause}{hint}")]
    Fatal {
        /// What was being done.
        op: &'static str,
        /// What went wrong (no row values).
        cause: String,
        /// What to do about it, if known (starts with "; ").
        hint: std::borrow::Cow<'static, str>,
    },
}

/// What part of the configuration a [`DbError::Misconfigured`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misconfiguration {
    /// The database is at a masking-key version this function's keys do
    /// not reach (a rotation began and the secret lacks the new version).
    KeyVersionBehind,
    /// The keys are not the ones the stored tokens or the erasure list are
    /// under (a secret replaced instead of appended to).
    KeyMismatch,
    /// The schema is not migrated: a table, column or the unique index is
    /// missing.
    SchemaIncomplete,
    /// The role lacks a privilege it needs (`login-etl grants`).
    PrivilegeMissing,
}

impl Misconfiguration {
    /// Its `failure_class`.
    pub fn class(self) -> &'static str {
        match self {
            Misconfiguration::KeyVersionBehind => "key_version_behind",
            Misconfiguration::KeyMismatch => "key_mismatch",
            Misconfiguration::SchemaIncomplete => "schema_incomplete",
            Misconfiguration::PrivilegeMissing => "privilege_missing",
        }
    }

    /// Every kind, for the metrics' documentation and the template's alarm.
    pub const ALL: [Misconfiguration; 4] = [
        Misconfiguration::KeyVersionBehind,
        Misconfiguration::KeyMismatch,
        Misconfiguration::SchemaIncomplete,
        Misconfiguration::PrivilegeMissing,
    ];
}

impl DbError {
    /// True when redelivering the batch later can succeed without a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            // The function reads the secret again: once the new version is
            // appended, the next delivery goes through.
            DbError::Misconfigured {
                what: Misconfiguration::KeyVersionBehind,
                ..
            } => true,
            DbError::Misconfigured { .. } => false,
            DbError::Fatal { .. } | DbError::ConnectRefused { .. } | DbError::Profile { .. } => {
                false
            }
            DbError::Secret(e) => e.is_retryable(),
            _ => true,
        }
    }
}

/// Why an invocation failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A record has no `messageId`, so it cannot be reported on its own.
    #[error(
        "record {index} of the batch has no messageId, so it cannot be reported individually; failing the whole batch (is the function invoked by an SQS event-source mapping?)"
    )]
    MissingMessageId {
        /// Position of the record in the batch.
        index: usize,
    },
    /// A record is not an SQS message (a field of the wrong type), so the
    /// batch cannot be handled.
    #[error(
        "record {index} of the batch is not an SQS message (a field of the wrong type, such as a messageId that is not a string or a body that is not text), so the batch cannot be handled; failing the whole batch (is the function invoked by an SQS event-source mapping?)"
    )]
    MalformedRecord {
        /// Position of the record in the batch.
        index: usize,
    },
    /// The payload stops being JSON part-way (cut short, corrupted), so
    /// the batch cannot be handled.
    #[error(
        "the payload stops being JSON at record {index} of the batch (cut short or corrupted), so the batch cannot be handled; failing the whole batch (is the function invoked by an SQS event-source mapping?)"
    )]
    UnreadablePayload {
        /// Position in the batch where the JSON breaks off.
        index: usize,
    },
    /// The payload is not an SQS batch event at all.
    #[error(transparent)]
    NotAnSqsEvent(#[from] NotAnSqsEvent),
    /// The database failed in a way that is not about one row.
    #[error(transparent)]
    Database(#[from] DbError),
}

impl HandlerError {
    /// The failure's class, a bounded code for metrics (the
    /// `failure_class` dimension of `InvocationFailed`).
    pub fn class(&self) -> &'static str {
        match self {
            HandlerError::MissingMessageId { .. } => "missing_message_id",
            HandlerError::MalformedRecord { .. }
            | HandlerError::UnreadablePayload { .. }
            | HandlerError::NotAnSqsEvent(_) => "malformed_event",
            HandlerError::Database(e) => Self::class_of(e),
        }
    }

    /// The class of a failed write (see [`class`](Self::class)).
    pub fn class_of(e: &DbError) -> &'static str {
        match e {
            DbError::Connect { .. } => "database_unavailable",
            DbError::Conflicts { .. } => "conflicts",
            DbError::Transient { .. } => "database_unavailable",
            DbError::Deadline { .. } => "deadline",
            DbError::ConnectRefused { .. } => "database_refused_connection",
            DbError::Misconfigured { what, .. } => what.class(),
            DbError::Fatal { .. } => "database_refused",
            DbError::Profile { .. } => "not_in_profile",
            DbError::Secret(_) => "secret_unavailable",
            DbError::BatchOutdated => "batch_outdated",
        }
    }

    /// True when redelivering the batch later can succeed without a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            HandlerError::MissingMessageId { .. }
            | HandlerError::MalformedRecord { .. }
            | HandlerError::UnreadablePayload { .. }
            | HandlerError::NotAnSqsEvent(_) => false,
            HandlerError::Database(e) => e.is_retryable(),
        }
    }
}

#[cfg(feature = "service")]
impl From<HandlerError> for Diagnostic {
    fn from(e: HandlerError) -> Self {
        let kind = if e.is_retryable() {
            "Retryable"
        } else {
            "NonRetryable"
        };
        Diagnostic {
            error_type: format!("LoginEtl.{kind}"),
            error_message: e.to_string(),
        }
    }
}

/// A PostgreSQL error as text without `DETAIL`/`HINT`, which can quote row
/// values. Other errors (I/O, TLS) get their whole cause chain, which
/// tokio-postgres's `Display` leaves out.
#[cfg(feature = "service")]
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("SQLSTATE {}: {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        cause = c.source();
    }
    text
}

/// Why a payload cannot be read as an SQS batch; quotes nothing of it.
pub const NOT_AN_SQS_EVENT: &str = "the payload is not an SQS batch event ({\"Records\": [...]} with string fields); invoke the function through an SQS event-source mapping or with a file from events/";

/// The payload is not an SQS batch event: its text says what to do and
/// quotes nothing of the payload.
#[derive(Debug, thiserror::Error)]
#[error("{NOT_AN_SQS_EVENT}")]
pub struct NotAnSqsEvent;
