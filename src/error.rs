//! Error types. None of them ever carries a record value, a password or the
//! masking key: messages name variables, fields and SQLSTATEs only.

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
    /// The setting asks for something this build does not do yet.
    #[error("{var} is set, but {what} is not supported by this build yet; {hint}")]
    Unsupported {
        /// The environment variable.
        var: &'static str,
        /// The unsupported feature.
        what: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
}

/// A failure of the PostgreSQL sink that is not about one row: it fails the
/// whole invocation so the event-source mapping redelivers the batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// No connection could be opened.
    #[error(
        "cannot connect to PostgreSQL at {target}: {cause}; check that the server is running and reachable from the function and that the credentials are right"
    )]
    Connect {
        /// `user@host:port/dbname`, never the password.
        target: String,
        /// What went wrong (no row values).
        cause: String,
    },
    /// The connection broke, timed out, or the server was overloaded.
    #[error("PostgreSQL failed while {op} (transient; the batch will be retried): {cause}")]
    Transient {
        /// What the sink was doing.
        op: &'static str,
        /// What went wrong (no row values).
        cause: String,
    },
    /// A failure that retrying will not fix (missing table, permissions, ...).
    #[error("PostgreSQL refused {op}: {cause}{hint}")]
    Fatal {
        /// What the sink was doing.
        op: &'static str,
        /// What went wrong (no row values).
        cause: String,
        /// What to do about it, if known (starts with "; ").
        hint: &'static str,
    },
}

impl SinkError {
    /// True when redelivering the batch later can succeed without a human.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SinkError::Fatal { .. })
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
    /// The database failed in a way that is not about one row.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl HandlerError {
    /// True when redelivering the batch later can succeed without a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            HandlerError::MissingMessageId { .. } => false,
            HandlerError::Sink(e) => e.is_retryable(),
        }
    }
}

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
