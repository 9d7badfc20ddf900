//! A queue judged as the function needs it, by `doctor --queue-url` and
//! by the stack's setup before its event-source mapping exists: a
//! visibility timeout the function's invocations fit in, a RedrivePolicy
//! naming the dead-letter queue the function sends to, with a
//! `maxReceiveCount` that rides out the outage the deployment tolerates,
//! and both queues' access policies ([`super::queue_policy`]).

use crate::poll::queue::{Queue, QueueInfo, long_poll_client};
use crate::table::doctor::Finding;

/// The largest batching window the template allows: the visibility
/// timeout covers it on top of six times the function's timeout.
pub(crate) const MAX_BATCHING_WINDOW_S: u32 = 30;

/// The principals a stack's queue policies exempt.
pub(crate) struct StackPrincipals {
    /// The queue's consumer: the function's role.
    pub function_role: String,
    /// The dead-letter queue's reader; without one, the function's role.
    pub dlq_operator: Option<String>,
    /// Who alone may rewrite the policies (`DeployPrincipalArns`).
    pub deploy: Vec<String>,
}

/// What the queue must hold to.
pub(crate) struct Wanted {
    /// The least visibility timeout, in seconds (0: not checked).
    pub visibility: u32,
    /// The receives before the dead-letter queue.
    pub receives: Receives,
    /// The dead-letter queue the function sends to, where known (the
    /// stack's `ExistingDlqArn`).
    pub dead_letter_arn: Option<String>,
    /// Said after the visibility timeout's fix (doctor's other way out).
    pub visibility_note: &'static str,
}

/// How many receives the queue must allow before it dead-letters.
pub(crate) enum Receives {
    /// Enough to ride out 30 minutes of outage with this backoff (doctor:
    /// `crate::poll::outage_warning`).
    Backoff(Option<crate::config::backoff::Schedule>),
    /// At least this many: the stack's own queue's, for its
    /// `OutageToleranceMinutes` (the setup).
    AtLeast(u32),
}

impl Wanted {
    /// The least visibility timeout for a function of `function_timeout`
    /// seconds (0: none).
    pub fn visibility_for(function_timeout: u32) -> u32 {
        if function_timeout == 0 {
            return 0;
        }
        function_timeout
            .saturating_mul(6)
            .saturating_add(MAX_BATCHING_WINDOW_S)
    }
}

/// What was found, apart: what would drain the queue wrongly (a message
/// back while an invocation holds it, a valid one dead-lettered in an
/// outage, a reject sent where SQS does not send), and who may read or
/// rewrite it.
#[derive(Default)]
pub(crate) struct QueueFindings {
    /// Visibility, RedrivePolicy and dead-letter queue.
    pub drains: Vec<Finding>,
    /// Both queues' access policies.
    pub policies: Vec<Finding>,
}

impl QueueFindings {
    fn add(list: &mut Vec<Finding>, subject: &str, problem: String, fix: String) {
        list.push(Finding {
            check: "queue",
            subject: subject.to_owned(),
            problem,
            fix,
        });
    }
}

/// Judges the queue at `url` and its dead-letter queue against `wanted`
/// and `stack`.
pub(crate) async fn examine(
    aws: &aws_config::SdkConfig,
    url: &str,
    wanted: &Wanted,
    stack: &StackPrincipals,
) -> QueueFindings {
    let mut found = QueueFindings::default();
    let queue = match Queue::open(long_poll_client(aws), url.to_owned(), None).await {
        Ok(q) => q,
        Err(e) => {
            let problem = format!("{} failed: {}", e.op, e.cause);
            QueueFindings::add(&mut found.drains, url, problem, e.hint.to_owned());
            return found;
        }
    };
    let info = queue.info();
    let visibility = info.visibility_timeout;
    if visibility < wanted.visibility {
        QueueFindings::add(
            &mut found.drains,
            url,
            format!(
                "its visibility timeout is {visibility} s, under the {} s the function needs (6 x its timeout + the batching window, {MAX_BATCHING_WINDOW_S} s): a message comes back while an invocation may still hold it (a second attempt, a receive counted toward maxReceiveCount)",
                wanted.visibility
            ),
            format!(
                "aws sqs set-queue-attributes --queue-url {url} --attributes VisibilityTimeout={}{}",
                wanted.visibility, wanted.visibility_note
            ),
        );
    }
    // An existing queue's statements come from the stack's outputs; a queue
    // the stack made has them in its template (an update repairs no
    // drift); a queue only `poll` reads has no stack: the page gives them.
    let policies = "docs/existing-queue.md; a queue the stack made: put its template's statements back with aws sqs set-queue-attributes, as aws cloudformation detect-stack-drift shows them";
    judge_policy(
        &mut found.policies,
        url,
        info,
        stack,
        &format!(
            "add to its policy the statements of the stack's output ExistingQueuePolicyStatements ({policies})"
        ),
        false,
    );
    redrive(&mut found.drains, url, info, wanted);
    if info.max_receive_count.is_none() {
        return found;
    }
    let dlq = match queue.dead_letter_url().await {
        Ok(dlq) => dlq,
        Err(e) => {
            let subject = info.dead_letter_arn.as_deref().unwrap_or(url);
            let problem = format!(
                "its RedrivePolicy's dead-letter queue was not found ({}: {})",
                e.op, e.cause
            );
            QueueFindings::add(&mut found.drains, subject, problem, e.hint.to_owned());
            None
        }
    };
    if let Some(dlq_url) = dlq {
        match Queue::open(long_poll_client(aws), dlq_url.clone(), None).await {
            Ok(dlq) => judge_policy(
                &mut found.policies,
                &dlq_url,
                dlq.info(),
                stack,
                &format!(
                    "add to its policy the statements of the stack's output ExistingDlqPolicyStatements ({policies})"
                ),
                true,
            ),
            Err(e) => QueueFindings::add(
                &mut found.drains,
                &dlq_url,
                format!("{} failed: {}", e.op, e.cause),
                e.hint.to_owned(),
            ),
        }
    }
    found
}

/// The queue's RedrivePolicy: there, naming the function's dead-letter
/// queue, with receives enough.
fn redrive(drains: &mut Vec<Finding>, url: &str, info: &QueueInfo, wanted: &Wanted) {
    let set_redrive = |dlq: &str, count: u32| {
        format!(
            "aws sqs set-queue-attributes --queue-url {url} --attributes '{{\"RedrivePolicy\":\"{{\\\"deadLetterTargetArn\\\":\\\"{dlq}\\\",\\\"maxReceiveCount\\\":\\\"{count}\\\"}}\"}}'"
        )
    };
    let least = match wanted.receives {
        Receives::AtLeast(n) => n,
        Receives::Backoff(_) => 1,
    };
    let Some(count) = info.max_receive_count else {
        let fix = match &wanted.dead_letter_arn {
            Some(dlq) => set_redrive(dlq, least),
            None => "give it a RedrivePolicy naming its dead-letter queue, with the maxReceiveCount doctor then asks for (docs/runbooks/outage.md)".into(),
        };
        QueueFindings::add(
            drains,
            url,
            "has no RedrivePolicy: a message that keeps failing comes back for ever, and nothing dead-letters it".into(),
            fix,
        );
        return;
    };
    let target = info.dead_letter_arn.as_deref().unwrap_or_default();
    if let Some(dlq) = wanted.dead_letter_arn.as_deref().filter(|d| *d != target) {
        QueueFindings::add(
            drains,
            url,
            format!(
                "its RedrivePolicy dead-letters to {target}, not to the stack's ExistingDlqArn {dlq}: the function's rejects and SQS's dead letters would part, and dlq-redrive would miss half"
            ),
            set_redrive(dlq, count.max(least)),
        );
    }
    match wanted.receives {
        Receives::AtLeast(n) if count < n => QueueFindings::add(
            drains,
            url,
            format!(
                "its maxReceiveCount is {count}, under the {n} the stack's own queue would have (OutageToleranceMinutes with BackoffMaxSeconds, or MaxReceiveCount): valid logins would reach the dead-letter queue in a shorter database outage (or while the database is still being set up)"
            ),
            set_redrive(wanted.dead_letter_arn.as_deref().unwrap_or(target), n),
        ),
        Receives::Backoff(backoff) => {
            if let Some(said) = crate::poll::outage_warning(backoff, Some(count)) {
                let (problem, fix) = said
                    .split_once("; set ")
                    .map_or((said.as_str(), ""), |(p, f)| (p, f));
                QueueFindings::add(drains, url, problem.to_owned(), format!("set {fix}"));
            }
        }
        Receives::AtLeast(_) => {}
    }
}

/// Doctor's findings on a queue's access policy (`crate::cli::queue_policy`):
/// plain HTTP refused, and receiving refused to all but the stack's
/// consumer (the function's role; the DLQ operator's on the dead-letter
/// queue, `dead_letter`), exactly; with deploy principals, rewriting the
/// policy refused to all but them; on the dead-letter queue SQS's own
/// redrive, which would move the masked copies instead of the originals.
fn judge_policy(
    list: &mut Vec<Finding>,
    url: &str,
    info: &crate::poll::queue::QueueInfo,
    stack: &StackPrincipals,
    fix: &str,
    dead_letter: bool,
) {
    use super::queue_policy::{Closed, PolicyVerdict};
    let mut found = |subject: &str, problem: String, fix: String| {
        QueueFindings::add(list, subject, problem, fix);
    };
    let closed = match Closed::of(info.policy.as_deref(), &info.arn) {
        Ok(closed) => closed,
        Err(why) => return found(url, why, fix.to_owned()),
    };
    let held = if dead_letter {
        "masked copies of rejected logins, and raw logins SQS moved here after maxReceiveCount"
    } else {
        "raw logins, ip and device id in clear"
    };
    let consumer = match (&stack.dlq_operator, dead_letter) {
        (Some(operator), true) => operator,
        _ => &stack.function_role,
    };
    match closed.receive.against(std::slice::from_ref(consumer)) {
        PolicyVerdict::Closed => {}
        PolicyVerdict::Open => found(
            url,
            format!(
                "its policy does not refuse ReceiveMessage to other principals: anyone in the account allowed sqs:ReceiveMessage on * reads its messages ({held})"
            ),
            fix.to_owned(),
        ),
        PolicyVerdict::Exempts { extra, missing } => {
            if !extra.is_empty() {
                found(
                    url,
                    format!(
                        "its policy's receive Deny exempts {} besides {consumer}: they read its messages ({held})",
                        extra.join(", ")
                    ),
                    format!("leave {consumer} alone in the Deny's aws:PrincipalArn; {fix}"),
                );
            }
            if !missing.is_empty() {
                found(
                    url,
                    format!(
                        "its policy refuses ReceiveMessage to {consumer} too: it cannot consume this queue"
                    ),
                    format!("name {consumer} in the Deny's aws:PrincipalArn; {fix}"),
                );
            }
        }
    }
    if !closed.plain_http {
        found(
            url,
            "its policy does not refuse requests without TLS (aws:SecureTransport false)".into(),
            fix.to_owned(),
        );
    }
    // The template writes the rewrite Deny only with DeployPrincipalArns.
    if !stack.deploy.is_empty() {
        for (action, refused) in [
            ("sqs:SetQueueAttributes", &closed.set_attributes),
            ("sqs:AddPermission", &closed.add_permission),
        ] {
            let problem = match refused.against(&stack.deploy) {
                PolicyVerdict::Closed => continue,
                PolicyVerdict::Open => format!(
                    "its policy does not refuse {action} to principals other than the deploy principals: anyone allowed it on * rewrites this policy and opens the queue"
                ),
                PolicyVerdict::Exempts { extra, missing } if extra.is_empty() => format!(
                    "its policy refuses {action} to the deploy principals {} too: the stack's updates cannot keep this policy",
                    missing.join(", ")
                ),
                PolicyVerdict::Exempts { extra, .. } => format!(
                    "its policy lets {} besides the deploy principals {action}: they can rewrite this policy and open the queue",
                    extra.join(", ")
                ),
            };
            found(
                url,
                problem,
                format!(
                    "a Deny of sqs:SetQueueAttributes, sqs:AddPermission and sqs:RemovePermission to all but the deploy principals (the template's OnlyTheDeployRewritesThisPolicy); {fix}"
                ),
            );
        }
    }
    if dead_letter && !closed.move_task.to_everyone() {
        found(
            url,
            "its policy does not refuse sqs:StartMessageMoveTask: an SQS redrive would move the masked copies instead of the originals, and they would come back here with nothing stored (login-etl dlq-redrive sends the originals back)".into(),
            fix.to_owned(),
        );
    }
}
