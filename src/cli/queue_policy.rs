//! What an SQS queue's access policy closes, for doctor's `queue` check:
//! the statements the stack puts on its own queues, and prints for an
//! existing queue's (`ExistingQueuePolicyStatements`,
//! `ExistingDlqPolicyStatements`; docs/existing-queue.md). A queue without them is read by anyone in the account with
//! `sqs:ReceiveMessage` on `*`: raw logins on the queue, masked copies and
//! sealed originals on its DLQ.
//!
//! Only Deny statements for every principal count: an Allow cannot close
//! what an identity policy elsewhere opens.

use serde_json::Value;

/// What a queue's policy refuses to every principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closed {
    /// Every action over plain HTTP (`aws:SecureTransport` false).
    pub plain_http: bool,
    /// Receiving, to every principal but the ones a condition on
    /// `aws:PrincipalArn` names.
    pub receive_to_others: bool,
    /// An SQS redrive (`sqs:StartMessageMoveTask`), to every principal.
    pub move_task: bool,
}

impl Closed {
    /// Reads the `Policy` attribute of the queue `arn` (none: nothing is
    /// closed).
    pub fn of(policy: Option<&str>, arn: &str) -> Result<Self, String> {
        let Some(text) = policy.filter(|p| !p.trim().is_empty()) else {
            return Ok(Self::default());
        };
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("its Policy is not JSON ({e})"))?;
        let statements = match doc.get("Statement") {
            Some(Value::Array(list)) => list.iter().collect(),
            Some(one @ Value::Object(_)) => vec![one],
            _ => Vec::new(),
        };
        let mut closed = Self::default();
        for s in statements
            .into_iter()
            .filter(|s| denies_everyone(s) && names(s, "Resource", arn, true))
        {
            let conditions = s.get("Condition");
            if covers(s, "sqs:SendMessage")
                && covers(s, "sqs:ReceiveMessage")
                && condition(conditions, &["Bool"], "aws:SecureTransport")
                    .is_some_and(|v| values(v).iter().any(|v| v.eq_ignore_ascii_case("false")))
            {
                closed.plain_http = true;
            }
            if covers(s, "sqs:ReceiveMessage")
                && (conditions.is_none()
                    || condition(
                        conditions,
                        &[
                            "StringNotEquals",
                            "StringNotLike",
                            "ArnNotEquals",
                            "ArnNotLike",
                        ],
                        "aws:PrincipalArn",
                    )
                    .is_some())
            {
                closed.receive_to_others = true;
            }
            if covers(s, "sqs:StartMessageMoveTask") && conditions.is_none() {
                closed.move_task = true;
            }
        }
        Ok(closed)
    }
}

/// A Deny whose principal is everyone.
fn denies_everyone(s: &Value) -> bool {
    let everyone = match s.get("Principal") {
        Some(Value::String(p)) => p == "*",
        // {"AWS": "*"} or {"AWS": ["*"]}: an IAM principal, which is anyone.
        Some(Value::Object(p)) => p
            .iter()
            .any(|(kind, a)| kind == "AWS" && values(a).contains(&"*")),
        _ => false,
    };
    s.get("Effect").and_then(Value::as_str) == Some("Deny")
        && everyone
        && s.get("NotAction").is_none()
}

/// Whether the statement's actions include `action`.
fn covers(s: &Value, action: &str) -> bool {
    names(s, "Action", action, false)
}

/// Whether the statement's `field` (`Action`, `Resource`) includes `name`
/// (IAM's wildcards `*` and `?`, case-insensitively); `absent`: what a
/// statement without the field says.
fn names(s: &Value, field: &str, name: &str, absent: bool) -> bool {
    s.get(field).map_or(absent, |v| {
        values(v)
            .iter()
            .any(|pattern| matches(&pattern.to_ascii_lowercase(), &name.to_ascii_lowercase()))
    })
}

/// `pattern` (with `*` and `?`) against the whole of `text`.
fn matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => {
            pattern.len() == text.len()
                && pattern
                    .bytes()
                    .zip(text.bytes())
                    .all(|(p, t)| p == b'?' || p == t)
        }
        Some((head, rest)) => {
            head.len() <= text.len()
                && matches(head, &text[..head.len()])
                && (head.len()..=text.len()).any(|i| matches(rest, &text[i..]))
        }
    }
}

/// The value a condition of one of `operators` gives `key` (IAM's keys
/// and operators are case-insensitive).
fn condition<'a>(
    conditions: Option<&'a Value>,
    operators: &[&str],
    key: &str,
) -> Option<&'a Value> {
    let conditions = conditions?.as_object()?;
    conditions
        .iter()
        .filter(|(op, _)| operators.iter().any(|o| o.eq_ignore_ascii_case(op)))
        .filter_map(|(_, keys)| keys.as_object())
        .flat_map(|keys| keys.iter())
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// A policy value as its list of strings (one string, a list, or a boolean
/// as its text).
fn values(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Bool(true) => vec!["true"],
        Value::Bool(false) => vec!["false"],
        Value::Array(list) => list.iter().flat_map(values).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DLQ: &str = "arn:aws:sqs:us-east-1:1:dlq";

    /// The statements the template prints for an existing DLQ
    /// (`ExistingDlqPolicyStatements`), ARNs filled in.
    const STACKS_DLQ: &str = r#"{"Version": "2012-10-17", "Statement": [
        {"Sid": "LoginEtlTlsOnly", "Effect": "Deny", "Principal": "*", "Action": "sqs:*",
         "Resource": "arn:aws:sqs:us-east-1:1:dlq", "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        {"Sid": "LoginEtlOnlyTheOperatorConsumes", "Effect": "Deny", "Principal": "*",
         "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:PurgeQueue"],
         "Resource": "arn:aws:sqs:us-east-1:1:dlq", "Condition": {"StringNotEquals": {"aws:PrincipalArn": "arn:aws:iam::1:role/op"}}},
        {"Sid": "LoginEtlNoMoveTask", "Effect": "Deny", "Principal": "*",
         "Action": ["sqs:StartMessageMoveTask", "sqs:CancelMessageMoveTask"], "Resource": "arn:aws:sqs:us-east-1:1:dlq"}]}"#;

    #[test]
    fn the_stacks_statements_close_all_three() {
        let all = Closed {
            plain_http: true,
            receive_to_others: true,
            move_task: true,
        };
        assert_eq!(Closed::of(Some(STACKS_DLQ), DLQ), Ok(all));
    }

    #[test]
    fn no_policy_or_allows_alone_close_nothing() {
        assert_eq!(Closed::of(None, DLQ), Ok(Closed::default()));
        assert_eq!(Closed::of(Some(""), DLQ), Ok(Closed::default()));
        let allows = STACKS_DLQ.replace("\"Deny\"", "\"Allow\"");
        assert_eq!(Closed::of(Some(&allows), DLQ), Ok(Closed::default()));
        assert!(Closed::of(Some("{not json"), DLQ).is_err());
        // Statements about another queue say nothing of this one.
        assert_eq!(
            Closed::of(Some(STACKS_DLQ), "arn:aws:sqs:us-east-1:1:other"),
            Ok(Closed::default())
        );
    }

    #[test]
    fn a_deny_for_one_principal_or_a_narrower_action_closes_nothing() {
        let one = STACKS_DLQ.replace(
            "\"Principal\": \"*\"",
            r#""Principal": {"AWS": "arn:aws:iam::1:root"}"#,
        );
        assert_eq!(Closed::of(Some(&one), DLQ), Ok(Closed::default()));
        // TLS refused for sending only: receiving over plain HTTP is open.
        let send_only = STACKS_DLQ.replacen(
            "\"Action\": \"sqs:*\"",
            "\"Action\": \"sqs:SendMessage\"",
            1,
        );
        assert!(!Closed::of(Some(&send_only), DLQ).unwrap().plain_http);
        // The move task refused only under a condition (some principals may).
        let conditional = STACKS_DLQ.replace(
            r#""Resource": "arn:aws:sqs:us-east-1:1:dlq"}]"#,
            r#""Resource": "arn:aws:sqs:us-east-1:1:dlq", "Condition": {"StringNotEquals": {"aws:PrincipalArn": "x"}}}]"#,
        );
        assert!(!Closed::of(Some(&conditional), DLQ).unwrap().move_task);
    }

    #[test]
    fn wildcards_one_statement_and_case_are_read_as_iam_reads_them() {
        let one = r#"{"Statement": {"Effect": "Deny", "Principal": {"AWS": ["*"]}, "Action": "SQS:Receive*",
            "Condition": {"stringnotlike": {"AWS:PrincipalArn": ["arn:aws:iam::1:role/f*"]}}}}"#;
        assert_eq!(
            Closed::of(Some(one), DLQ),
            Ok(Closed {
                receive_to_others: true,
                ..Closed::default()
            })
        );
        let tls = r#"{"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "*",
            "Condition": {"Bool": {"aws:SecureTransport": false}}}]}"#;
        assert_eq!(
            Closed::of(Some(tls), DLQ),
            Ok(Closed {
                plain_http: true,
                ..Closed::default()
            })
        );
        assert!(matches("sqs:?eceivemessage", "sqs:receivemessage"));
        assert!(!matches("sqs:receive", "sqs:receivemessage"));
        assert!(matches("*", ""));
    }
}
