//! `login-etl dlq-redrive`: the dead-letter queue's messages sent back to
//! the source queue, each as its producer sent it.
//!
//! A copy the function made ([`crate::ingest::dlq`]) holds a masked body;
//! its original is sealed in its attributes and opens only for the DLQ
//! operator ([`crate::privacy::dead_letter`]). This sends the original,
//! with the copy's signed redrive key (`source_message_id`,
//! `source_sent_timestamp`, `source_signature`), so it lands on the
//! original's row if it was ever stored, and deletes the copy once SQS took
//! the message. A message SQS moved itself (after `maxReceiveCount`, no
//! `rejection_code`) is sent as it is. Nothing is deleted before its
//! message is in the source queue, and a copy that cannot be sent back
//! stays where it is, counted by why.
//!
//! A copy that kept no original (`login-etl poll` without
//! `DLQ_KMS_KEY_ID`; every such copy made before 0.3.0 is unsigned, and
//! stays) can still come back with `--rebuild` ([`Rebuilder`]) when the
//! function signed it, of a producer's message: its masked body, its row
//! key and its tokens' key version, sealed under the dead-letter key,
//! which the function stores as it is
//! ([`crate::privacy::dead_letter::rebuilt`]); a copy that holds no login
//! stays, counted by why.
//!
//! SQS's own redrive (`StartMessageMoveTask`, the console's "Start DLQ
//! redrive") would move the masked bodies, which are rejected again.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use tracing::warn;

use crate::contract::NOT_A_PRODUCERS;
use crate::privacy::masking::signature_version;
use crate::ingest::sqs_batch;
use crate::privacy::dead_letter::rebuilt::{REBUILT_SEAL, Rebuilt, seal};
use crate::privacy::dead_letter::{SEALED_BODY, SEALED_KEY, UnsealError, Unsealer};

/// What to redrive.
#[derive(Debug, Clone)]
pub struct RedriveOptions {
    /// The dead-letter queue's URL.
    pub dlq_url: String,
    /// The source queue's URL, where the messages go.
    pub to_url: String,
    /// Only count what would be sent (the messages are released at once).
    pub dry_run: bool,
    /// Stop after this many messages received.
    pub max: Option<u64>,
}

/// What a run did, by count.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RedriveReport {
    /// Messages received from the dead-letter queue.
    pub received: u64,
    /// Sent to the source queue and deleted from the dead-letter queue
    /// (with `--dry-run`: would be).
    pub redriven: u64,
    /// Of those, the originals unsealed from the function's copies.
    pub unsealed: u64,
    /// Of those, messages SQS moved itself, sent as they are.
    pub as_they_are: u64,
    /// Of those, logins rebuilt from copies that kept no original
    /// (`--rebuild`).
    pub rebuilt: u64,
    /// Messages left in the dead-letter queue, by why.
    pub left: BTreeMap<String, u64>,
    /// Messages received by `rejection_code` (`moved_by_sqs` without one).
    pub by_rejection_code: BTreeMap<String, u64>,
}

/// Why a run stopped before the queue was empty.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// An SQS call failed.
    #[error("SQS {op} on {url} failed ({code}): {message}{hint}")]
    Sqs {
        /// The operation.
        op: &'static str,
        /// The queue.
        url: String,
        /// The AWS error code.
        code: String,
        /// What the SDK said.
        message: String,
        /// What to check (starts with "; ").
        hint: &'static str,
    },
    /// KMS refused to unwrap a copy's data key: no copy would open.
    #[error(transparent)]
    Kms(#[from] crate::privacy::vault::VaultError),
    /// A copy holds a sealed original and no KMS key was given.
    #[error(
        "the dead-letter queue holds sealed copies and DLQ_KMS_KEY_ID is not set: give the dead-letter key (the stack's DlqKeyArn output) and run as DlqOperatorRole"
    )]
    NoKmsKey,
}

/// Messages per call (the SQS limit).
const PER_CALL: i32 = sqs_batch::MAX_ENTRIES as i32;
/// How long a received message stays hidden while the run goes on: what
/// it leaves is shown again at its end, at once.
const VISIBILITY_SECONDS: i32 = 1_800;

/// Runs the redrive (see the module documentation); `progress` sees the
/// counts after every batch of up to ten messages. Only what was in the
/// dead-letter queue when the run began is taken, each message once: an
/// original that fails again comes back as a new copy, for the next run.
pub async fn redrive(
    sqs: &Client,
    unsealer: Option<&mut Unsealer>,
    rebuilder: Option<&Rebuilder>,
    options: &RedriveOptions,
    progress: &mut dyn FnMut(&RedriveReport),
) -> Result<RedriveReport, RedriveError> {
    // Every message received and not deleted (everything, in a dry run) is
    // hidden until the run ends, so no message is taken twice, then shown
    // again at once: on every exit, an error's too.
    let mut held = Vec::new();
    let result = take(sqs, unsealer, rebuilder, options, progress, &mut held).await;
    if !held.is_empty() {
        release(sqs, &options.dlq_url, &held).await;
    }
    result
}

/// The run itself: `held` gets each message's receipt handle as it is
/// received and loses it once the message is deleted.
async fn take(
    sqs: &Client,
    mut unsealer: Option<&mut Unsealer>,
    rebuilder: Option<&Rebuilder>,
    options: &RedriveOptions,
    progress: &mut dyn FnMut(&RedriveReport),
    held: &mut Vec<String>,
) -> Result<RedriveReport, RedriveError> {
    let started_ms = chrono::Utc::now().timestamp_millis();
    let mut report = RedriveReport::default();
    let fifo = options.to_url.ends_with(".fifo");
    let mut seen = std::collections::HashSet::new();
    loop {
        let want = options.max.map_or(PER_CALL, |m| {
            m.saturating_sub(report.received)
                .min(sqs_batch::MAX_ENTRIES as u64) as i32
        });
        if want == 0 {
            break;
        }
        let received = receive(sqs, &options.dlq_url, want).await?;
        held.extend(received.iter().filter_map(|m| m.receipt_handle.clone()));
        // A message seen already (shown again), or one that arrived after
        // the run began (an original that failed again), waits for the next
        // run. One sent in the run's first millisecond came before anything
        // the run sent: taken. (SentTimestamp is SQS's clock, started_ms
        // ours: the boundary is as close as the two clocks.)
        let messages: Vec<Message> = received
            .into_iter()
            .filter(|m| {
                let id = m.message_id.clone().unwrap_or_default();
                sent_ms(m).is_none_or(|t| t <= started_ms) && seen.insert(id)
            })
            .collect();
        if messages.is_empty() {
            break;
        }
        report.received += messages.len() as u64;
        let mut outgoing = Vec::new();
        for m in &messages {
            let code = attribute(m, "rejection_code").map_or("moved_by_sqs", shown_code);
            *report.by_rejection_code.entry(code.to_owned()).or_default() += 1;
            match original(m, unsealer.as_deref_mut(), rebuilder).await? {
                Ok(out) => outgoing.push((m, out)),
                Err(why) => *report.left.entry(why.into()).or_default() += 1,
            }
        }
        if options.dry_run {
            for (_, out) in &outgoing {
                report.redriven += 1;
                count_kind(&mut report, out);
            }
        } else {
            send_back(sqs, options, &outgoing, fifo, &mut report, held).await?;
        }
        progress(&report);
    }
    Ok(report)
}

/// Sends the originals (in calls SQS takes: 10 entries, under 1 MiB),
/// deletes each copy whose original SQS took (no longer `held`), holds the
/// others.
async fn send_back(
    sqs: &Client,
    options: &RedriveOptions,
    outgoing: &[(&Message, SendBack)],
    fifo: bool,
    report: &mut RedriveReport,
    held: &mut Vec<String>,
) -> Result<(), RedriveError> {
    for call in sqs_batch::batches(outgoing.iter().map(|(_, o)| o.size())) {
        let chunk = &outgoing[call];
        let sent = send(sqs, &options.to_url, chunk, fifo).await?;
        let mut done = Vec::new();
        for (i, (m, out)) in chunk.iter().enumerate() {
            if sent.contains(&i) {
                report.redriven += 1;
                count_kind(report, out);
                done.extend(m.receipt_handle.clone());
            } else {
                *report
                    .left
                    .entry("refused_by_the_source_queue".into())
                    .or_default() += 1;
            }
        }
        // Sent back: no longer released at the end (a copy whose delete
        // fails shows again after the visibility timeout, not at once).
        held.retain(|h| !done.contains(h));
        delete(sqs, &options.dlq_url, &done).await?;
    }
    Ok(())
}

/// When the dead-letter queue took the message (epoch ms).
fn sent_ms(m: &Message) -> Option<i64> {
    m.attributes
        .as_ref()?
        .get(&MessageSystemAttributeName::SentTimestamp)?
        .parse()
        .ok()
}

/// A `rejection_code` as the report counts it: the function's codes are
/// short and plain; anything else (a producer's own attribute on a
/// message SQS moved) is counted as `not_a_code`.
fn shown_code(code: &str) -> &str {
    let plain = code.len() <= 100
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._<>".contains(&b));
    if plain { code } else { "not_a_code" }
}

/// The message to send back.
struct SendBack {
    body: String,
    attributes: HashMap<String, MessageAttributeValue>,
    group: Option<String>,
    /// The FIFO deduplication id: the copy's own message id (an original
    /// that failed again is a new copy, and is sent back again).
    dedup: String,
    kind: Recovery,
}

/// How the message sent back was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// As SQS moved it.
    AsItIs,
    /// Unsealed from the function's copy.
    Unsealed,
    /// Rebuilt from a copy that kept no original.
    Rebuilt,
}

/// `--rebuild`: a copy that kept no original goes back as a rebuilt login,
/// sealed under the dead-letter key (`kms:Encrypt`, the DLQ operator's).
pub struct Rebuilder {
    kms: aws_sdk_kms::Client,
    kms_key_id: String,
}

impl Rebuilder {
    /// Seals with `kms` under `kms_key_id` (the stack's `DlqKeyArn`).
    pub fn new(kms: aws_sdk_kms::Client, kms_key_id: String) -> Self {
        Self { kms, kms_key_id }
    }

    /// The rebuilt login of copy `m` (id `id`, its original `source`), or
    /// why it cannot be one: the copy holds no login (`copy_holds_no_login`:
    /// not an object, or no `user_id` it kept), or no row key
    /// (`copy_has_no_row_key`: its original had no `SentTimestamp`).
    async fn rebuild(
        &self,
        m: &Message,
        source: &str,
        group: Option<String>,
    ) -> Result<Result<SendBack, &'static str>, RedriveError> {
        let body = m.body.clone().unwrap_or_default();
        if crate::contract::rebuilt_login::parse_copy(&body, &crate::contract::Contract::DEFAULT).is_err() {
            return Ok(Err("copy_holds_no_login"));
        }
        let Some(sent) = attribute(m, "source_sent_timestamp") else {
            return Ok(Err("copy_has_no_row_key"));
        };
        // The function rebuilds only from a copy it signed: one made before
        // copies were signed stays.
        let (Some(signature), Some(code)) = (attribute(m, "copy_signature"), attribute(m, "rejection_code"))
        else {
            return Ok(Err("copy_unsigned"));
        };
        // A copy whose row key was not signed was no producer's message.
        let Some(row_key_signature) = attribute(m, "source_signature") else {
            return Ok(Err("not_a_producers"));
        };
        let Some(key_version) = signature_version(signature) else {
            return Ok(Err("copy_unsigned"));
        };
        let rebuilt = Rebuilt {
            source_message_id: source,
            sent_timestamp: sent,
            key_version,
            body: &body,
        };
        let sealed = match seal(&self.kms, &self.kms_key_id, &rebuilt).await {
            Ok(sealed) => sealed,
            Err(e) => {
                warn!(error = %e, "KMS did not seal a rebuilt login: its copy stays in the dead-letter queue; run as DlqOperatorRole (kms:Encrypt on the stack's DlqKeyArn), and again once KMS answers");
                return Ok(Err("kms_refused"));
            }
        };
        let text = |v: String| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .expect("a data type and a value")
        };
        let attributes = HashMap::from([
            ("source_message_id".to_owned(), text(source.to_owned())),
            ("source_sent_timestamp".to_owned(), text(sent.to_owned())),
            (
                "rebuilt_key_version".to_owned(),
                text(key_version.to_string()),
            ),
            (REBUILT_SEAL.to_owned(), text(sealed)),
            ("copy_signature".to_owned(), text(signature.to_owned())),
            ("source_rejection_code".to_owned(), text(code.to_owned())),
            (
                "source_signature".to_owned(),
                text(row_key_signature.to_owned()),
            ),
        ]);
        Ok(Ok(SendBack {
            body,
            attributes,
            group,
            dedup: m.message_id.clone().unwrap_or_default(),
            kind: Recovery::Rebuilt,
        }))
    }
}

impl SendBack {
    /// About what it weighs in a `SendMessageBatch`.
    fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.string_value().map_or(0, str::len) + 16)
                .sum::<usize>()
            + 200
    }
}

fn count_kind(report: &mut RedriveReport, out: &SendBack) {
    match out.kind {
        Recovery::Unsealed => report.unsealed += 1,
        Recovery::AsItIs => report.as_they_are += 1,
        Recovery::Rebuilt => report.rebuilt += 1,
    }
}

fn attribute<'m>(m: &'m Message, name: &str) -> Option<&'m str> {
    m.message_attributes.as_ref()?.get(name)?.string_value()
}

/// The producer's message behind `m`, or why it stays.
async fn original(
    m: &Message,
    unsealer: Option<&mut Unsealer>,
    rebuilder: Option<&Rebuilder>,
) -> Result<Result<SendBack, &'static str>, RedriveError> {
    let group = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned();
    let id = m.message_id.clone().unwrap_or_default();
    if attribute(m, "rejection_code").is_none() {
        // Moved by SQS: the producer's message, attributes and all.
        return Ok(Ok(SendBack {
            body: m.body.clone().unwrap_or_default(),
            attributes: m.message_attributes.clone().unwrap_or_default(),
            group,
            dedup: id,
            kind: Recovery::AsItIs,
        }));
    }
    // The DLQ operator's own message, or a rebuilt login that did not
    // hold: nothing of a producer's to send back (the function would
    // refuse it again). A producer's copy that the operator's role sent
    // back as it was keeps its signed row key, and goes back.
    if attribute(m, "rejection_code").is_some_and(|code| NOT_A_PRODUCERS.contains(&code))
        && attribute(m, "source_signature").is_none()
    {
        return Ok(Err("not_a_producers"));
    }
    let source = attribute(m, "source_message_id").unwrap_or(&id).to_owned();
    let (Some(body), Some(key)) = (attribute(m, SEALED_BODY), attribute(m, SEALED_KEY)) else {
        if m.body
            .as_deref()
            .is_some_and(|b| b.starts_with("<empty body"))
        {
            return Ok(Err("empty_body"));
        }
        return match rebuilder {
            Some(r) => r.rebuild(m, &source, group).await,
            None => Ok(Err("no_original_kept")),
        };
    };
    let Some(unsealer) = unsealer else {
        return Err(RedriveError::NoKmsKey);
    };
    let body = match unsealer.open(&source, body, key).await {
        Ok(body) => body,
        // One copy's refusal (a throttle, a key disabled, a grant gone) is
        // that copy's: the run goes on and it stays in the queue.
        Err(UnsealError::Kms(e)) => {
            warn!(error = %e, "KMS did not open a copy's key: it stays in the dead-letter queue; run as DlqOperatorRole with DLQ_KMS_KEY_ID the stack's DlqKeyArn, and again once KMS answers");
            return Ok(Err("kms_refused"));
        }
        Err(e @ UnsealError::Altered { .. }) => {
            warn!(error = %e, "a sealed copy did not open");
            return Ok(Err("sealed_body_does_not_open"));
        }
    };
    let attributes = [
        "source_message_id",
        "source_sent_timestamp",
        "source_signature",
    ]
    .into_iter()
    .filter_map(|name| {
        m.message_attributes
            .as_ref()?
            .get(name)
            .map(|v| (name.to_owned(), v.clone()))
    })
    .collect();
    Ok(Ok(SendBack {
        body: body.to_string(),
        attributes,
        group,
        dedup: id,
        kind: Recovery::Unsealed,
    }))
}

fn sqs_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    op: &'static str,
    url: &str,
    e: &aws_sdk_sqs::error::SdkError<E, R>,
    hint: &'static str,
) -> RedriveError {
    RedriveError::Sqs {
        op,
        url: url.to_owned(),
        code: e.code().unwrap_or("no code").to_owned(),
        message: DisplayErrorContext(e).to_string(),
        hint,
    }
}

const OPERATOR_HINT: &str = "; run as DlqOperatorRole (the stack's DlqOperatorRoleArn output): the queues' policies let no other principal read the dead-letter queue or redrive into the source queue";

async fn receive(sqs: &Client, url: &str, max: i32) -> Result<Vec<Message>, RedriveError> {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(max)
        .wait_time_seconds(1)
        .visibility_timeout(VISIBILITY_SECONDS)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .map_err(|e| sqs_error("ReceiveMessage", url, &e, OPERATOR_HINT))?;
    Ok(out.messages.unwrap_or_default())
}

/// Sends the originals; returns the indexes SQS accepted.
async fn send(
    sqs: &Client,
    url: &str,
    outgoing: &[(&Message, SendBack)],
    fifo: bool,
) -> Result<Vec<usize>, RedriveError> {
    if outgoing.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    for (i, (_, out)) in outgoing.iter().enumerate() {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(sqs_batch::entry_id(i))
            .message_body(&out.body)
            .set_message_attributes(Some(out.attributes.clone()).filter(|a| !a.is_empty()));
        if fifo {
            entry = entry
                .message_group_id(out.group.as_deref().unwrap_or("login-etl-redrive"))
                .message_deduplication_id(&out.dedup);
        }
        entries.push(entry.build().expect("an id and a body are set"));
    }
    let out = sqs
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| sqs_error("SendMessageBatch", url, &e, OPERATOR_HINT))?;
    Ok(sqs_batch::confirmed(
        &out,
        outgoing.len(),
        "the source queue refused a redriven message; its copy stays in the dead-letter queue",
    ))
}

/// Deletes the copies of `handles`.
async fn delete(sqs: &Client, url: &str, handles: &[String]) -> Result<(), RedriveError> {
    if handles.is_empty() {
        return Ok(());
    }
    let entries = handles
        .iter()
        .enumerate()
        .map(|(i, h)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(sqs_batch::entry_id(i))
                .receipt_handle(h)
                .build()
                .expect("an id and a handle are set")
        })
        .collect();
    let out = sqs
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| {
            sqs_error(
                "DeleteMessageBatch",
                url,
                &e,
                "; the messages are in the source queue already and their copies show again in the dead-letter queue after 30 minutes (the run's visibility timeout): a later run sends them again (a function's copy lands on its original's row; a message SQS moved itself would be stored twice, so delete those by hand)",
            )
        })?;
    sqs_batch::confirmed(
        &out,
        handles.len(),
        "a redriven copy was not deleted from the dead-letter queue; a second run sends it again (the same row)",
    );
    Ok(())
}

/// Makes the messages the run leaves in the queue visible again.
async fn release(sqs: &Client, url: &str, handles: &[String]) {
    for chunk in handles.chunks(sqs_batch::MAX_ENTRIES) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, h)| {
                aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(sqs_batch::entry_id(i))
                    .receipt_handle(h)
                    .visibility_timeout(0)
                    .build()
                    .expect("an id and a handle are set")
            })
            .collect();
        match sqs
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                sqs_batch::confirmed(
                    &out,
                    chunk.len(),
                    "a message left in the dead-letter queue was not made visible again; it shows again when the run's visibility timeout ends",
                );
            }
            Err(e) => {
                warn!(error = %DisplayErrorContext(&e), "the messages left in the dead-letter queue show again after {VISIBILITY_SECONDS} s")
            }
        }
    }
}
