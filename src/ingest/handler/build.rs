//! The handler's making: its settings, set once at a cold start, and what
//! the consumer asks of it outside any batch (a spare connection, the keys'
//! check).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::error::DbError;
use crate::config::backoff::Schedule;
use crate::ingest::backoff::Visibility;
use crate::ingest::dlq::DeadLetterQueue;
use crate::emf::{DEFAULT_NAMESPACE, DEFAULT_SERVICE};
use crate::ingest::metrics::Metrics;
use crate::ingest::sink::PgSink;
use crate::privacy::dead_letter::rebuilt::RebuiltVerifier;
use crate::privacy::keys::{KeyReload, Keys};
use crate::privacy::masking::Masker;
use crate::privacy::vault::DataKey;

use super::{BatchHandler, DaysAhead};
use crate::ingest::trace::Tracer;

impl BatchHandler {
    /// A handler that masks with `masker` and writes through `sink`; rejected
    /// records are reported (no dead-letter queue of its own), metrics go to
    /// stdout under the default namespace.
    pub fn new(masker: Masker, sink: PgSink) -> Self {
        Self {
            keys: Arc::new(Keys::new(masker)),
            sinks: vec![Mutex::new(sink)],
            dlq: None,
            rebuilt: None,
            operator_role_id: None,
            metrics: Metrics::new(DEFAULT_NAMESPACE, DEFAULT_SERVICE, "login-etl"),
            vault: None,
            backoff: None,
            refused_max_receives: crate::config::DEFAULT_REFUSED_MAX_RECEIVES,
            contract: crate::contract::Contract::default(),
            days_ahead: DaysAhead::default(),
            tracer: Tracer::default(),
        }
    }

    /// Stores the logins `dlq-redrive --rebuild` makes from dead-letter
    /// copies that kept no original, when their seals open under
    /// `verifier`'s key (the dead-letter key).
    pub fn with_rebuilt_verifier(mut self, verifier: RebuiltVerifier) -> Self {
        self.rebuilt = Some(verifier);
        self
    }

    /// Lets `n` batches write at once, each on a connection of its own (the
    /// sink's siblings); Lambda sends one batch at a time per environment.
    pub fn with_connections(mut self, n: usize) -> Self {
        let first = self.sinks[0].get_mut();
        let more: Vec<Mutex<PgSink>> = (1..n.max(1)).map(|_| Mutex::new(first.sibling())).collect();
        self.sinks.extend(more);
        self
    }

    /// A sink with the handler's settings and a connection of its own (the
    /// consumer's database probe).
    pub async fn spare_sink(&self) -> PgSink {
        self.sinks[0].lock().await.sibling()
    }

    /// Whether the keys this environment holds are the ones the database
    /// records (what every batch would otherwise be refused for), asked
    /// within `within` and recording nothing: `login-etl poll`'s start.
    pub async fn verify_keys(&self, within: Duration) -> Result<(), DbError> {
        let mut sink = self.sink().await;
        sink.batch_keys(&self.keys, Some(Instant::now() + within), false)
            .await
            .map(|_| ())
    }

    /// The keys, for a check outside any batch (the consumer's probe
    /// asking again what its start refused: `PgSink::batch_keys` without
    /// recording).
    pub fn key_checker(&self) -> Arc<Keys> {
        Arc::clone(&self.keys)
    }

    /// After an infrastructure failure of the write, reports the batch's
    /// records in `batchItemFailures` and backs each one off (its visibility,
    /// by `schedule`, through `visibility`) instead of failing the
    /// invocation; see `crate::ingest::backoff`. Without it a failed write fails
    /// the invocation.
    pub fn with_backoff(mut self, schedule: Schedule, visibility: Visibility) -> Self {
        self.backoff = Some((schedule, visibility));
        self
    }

    /// Sends a row the database refused to the DLQ (`refused.<SQLSTATE>`)
    /// on its `receives`-th receive (0: never). Default 3.
    pub fn with_refused_max_receives(mut self, receives: u32) -> Self {
        self.refused_max_receives = receives;
        self
    }

    /// Refuses what the DLQ operator's role (`DLQ_OPERATOR_ROLE_ID`, its
    /// `AROA…` id) sends unless it is what `dlq-redrive` sends.
    pub fn with_dlq_operator(mut self, role_id: Option<String>) -> Self {
        self.operator_role_id = role_id;
        self
    }

    /// Holds messages to `contract` (`UNKNOWN_FIELDS`, `EXTRA_FIELDS`).
    pub fn with_contract(mut self, contract: crate::contract::Contract) -> Self {
        self.contract = contract;
        self
    }

    /// Keeps each batch's original ip and device_id in the PII vault,
    /// encrypted under `key` (see `crate::privacy::vault`).
    pub fn with_vault(mut self, key: DataKey) -> Self {
        self.vault = Some(key);
        self
    }

    /// Sends rejected records to `dlq` directly (`DLQ_URL`).
    pub fn with_dead_letter_queue(mut self, dlq: DeadLetterQueue) -> Self {
        self.dlq = Some(dlq);
        self
    }

    /// Makes each batch's spans with `tracer` (tracing on: src/telemetry.rs).
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Writes metrics with `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reads the keys again with `reload` when the database's key version is
    /// newer than any this handler holds (a rotation began after its cold
    /// start). Without it such a batch fails as retryable.
    pub fn with_key_reload(mut self, reload: KeyReload) -> Self {
        let keys =
            Arc::into_inner(self.keys).expect("the keys are shared only once the handler is built");
        self.keys = Arc::new(keys.with_reload(reload));
        self
    }
}
