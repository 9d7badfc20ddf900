//! What an SQS queue's access policy closes, for doctor's `queue` check:
//! the statements the stack puts on its own queues, and prints for an
//! existing queue's (`ExistingQueuePolicyStatements`,
//! `ExistingDlqPolicyStatements`; docs/existing-queue.md). A queue without
//! them is read by anyone in the account with `sqs:ReceiveMessage` on `*`:
//! raw logins on the queue; on its DLQ masked copies of rejected logins,
//! and raw logins SQS moved there after `maxReceiveCount`.
//!
//! Only a Deny for every principal counts (an Allow cannot close what an
//! identity policy elsewhere opens), and only one that applies to every
//! request it is judged for: one condition at most, no pattern among the
//! principals it exempts, no `Not…` element. Anything else is judged open,
//! so that doctor never calls a queue closed that is not.

use std::collections::BTreeSet;

use serde_json::Value;

/// Who an action is refused to: the meet of every Deny for everyone that
/// covers it (a principal any of them refuses is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Refused {
    /// No Deny doctor can rely on covers it.
    #[default]
    Open,
    /// To every principal but these (none: to everyone).
    AllBut(BTreeSet<String>),
}

/// An exemption list against the stack's own principals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyVerdict {
    /// Refused to all but exactly the stack's own.
    Closed,
    /// Not refused to everyone.
    Open,
    /// `extra`: exempted, not the stack's (they may do it);
    /// `missing`: the stack's, refused (they cannot).
    Exempts {
        extra: Vec<String>,
        missing: Vec<String>,
    },
}

impl Refused {
    fn narrow(&mut self, exempt: &BTreeSet<String>) {
        *self = Refused::AllBut(match std::mem::take(self) {
            Refused::Open => exempt.clone(),
            Refused::AllBut(had) => had.intersection(exempt).cloned().collect(),
        });
    }

    /// Refused to everyone, none exempted.
    pub fn to_everyone(&self) -> bool {
        matches!(self, Refused::AllBut(s) if s.is_empty())
    }

    /// Judged against `stacks`, the principals the template exempts.
    pub fn against(&self, stacks: &[String]) -> PolicyVerdict {
        let Refused::AllBut(exempt) = self else {
            return PolicyVerdict::Open;
        };
        let stacks: BTreeSet<&str> = stacks.iter().map(String::as_str).collect();
        let extra: Vec<String> = exempt
            .iter()
            .filter(|p| !stacks.contains(p.as_str()))
            .cloned()
            .collect();
        let missing: Vec<String> = stacks
            .iter()
            .filter(|p| !exempt.contains(**p))
            .map(|p| (*p).to_owned())
            .collect();
        if extra.is_empty() && missing.is_empty() {
            PolicyVerdict::Closed
        } else {
            PolicyVerdict::Exempts { extra, missing }
        }
    }
}

/// What a queue's policy refuses, and to whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closed {
    /// Every action over plain HTTP (`aws:SecureTransport` false).
    pub plain_http: bool,
    pub receive: Refused,
    pub set_attributes: Refused,
    pub add_permission: Refused,
    /// An SQS redrive (`sqs:StartMessageMoveTask`).
    pub move_task: Refused,
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
        for s in statements.into_iter().filter(|s| applies_here(s, arn)) {
            let exempt = match only_condition(s) {
                Only::None => BTreeSet::new(),
                Only::One(op, key, value) => {
                    if op.eq_ignore_ascii_case("Bool")
                        && key.eq_ignore_ascii_case("aws:SecureTransport")
                        && values(value)
                            .iter()
                            .any(|v| v.eq_ignore_ascii_case("false"))
                        && covers(s, "sqs:SendMessage")
                        && covers(s, "sqs:ReceiveMessage")
                    {
                        closed.plain_http = true;
                    }
                    match exempted(op, key, value) {
                        Some(exempt) => exempt,
                        None => continue,
                    }
                }
                Only::More => continue,
            };
            for (action, refused) in [
                ("sqs:ReceiveMessage", &mut closed.receive),
                ("sqs:SetQueueAttributes", &mut closed.set_attributes),
                ("sqs:AddPermission", &mut closed.add_permission),
                ("sqs:StartMessageMoveTask", &mut closed.move_task),
            ] {
                if covers(s, action) {
                    refused.narrow(&exempt);
                }
            }
        }
        Ok(closed)
    }
}

/// The principals a condition exempts from a Deny: a `…Not…` operator on
/// `aws:PrincipalArn` naming them, none by a pattern (`*`, an account's
/// every role: everyone again) or a variable. `None`: a condition that
/// exempts otherwise, or that doctor cannot read.
fn exempted(op: &str, key: &str, value: &Value) -> Option<BTreeSet<String>> {
    const EXEMPTING: [&str; 4] = [
        "StringNotEquals",
        "StringNotLike",
        "ArnNotEquals",
        "ArnNotLike",
    ];
    let named = values(value);
    (EXEMPTING.iter().any(|o| o.eq_ignore_ascii_case(op))
        && key.eq_ignore_ascii_case("aws:PrincipalArn")
        && !named.is_empty()
        && named.len() == value.as_array().map_or(1, Vec::len)
        && named.iter().all(|v| !v.contains(['*', '?', '$'])))
    .then(|| named.into_iter().map(str::to_owned).collect())
}

/// A Deny for every principal that is about this queue: its `Resource`
/// names it (or is absent), and no `NotPrincipal`, `NotAction` or
/// `NotResource` narrows it to something else.
fn applies_here(s: &Value, arn: &str) -> bool {
    let everyone = match s.get("Principal") {
        Some(Value::String(p)) => p == "*",
        // {"AWS": "*"} or {"AWS": ["*"]}: an IAM principal, which is anyone.
        Some(Value::Object(p)) => p
            .iter()
            .any(|(kind, a)| kind == "AWS" && values(a).contains(&"*")),
        _ => false,
    };
    // A queue's ARN is case-sensitive (its name is).
    let here = s.get("Resource").is_none_or(|r| {
        values(r)
            .iter()
            .any(|pattern| wildcard_match(pattern.as_bytes(), arn.as_bytes()))
    });
    s.get("Effect").and_then(Value::as_str) == Some("Deny")
        && everyone
        && here
        && ["NotPrincipal", "NotAction", "NotResource"]
            .iter()
            .all(|not| s.get(not).is_none())
}

/// Whether the statement's actions include `action` (IAM's wildcards,
/// case-insensitively: actions are).
fn covers(s: &Value, action: &str) -> bool {
    s.get("Action").is_some_and(|a| {
        values(a).iter().any(|pattern| {
            wildcard_match(
                pattern.to_ascii_lowercase().as_bytes(),
                action.to_ascii_lowercase().as_bytes(),
            )
        })
    })
}

/// IAM's wildcard match of all of `text`: `*` any run, `?` one character
/// (the last `*` is the only one ever gone back to: never exponential).
pub(crate) fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t, mut star, mut mark) = (0, 0, None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if let Some(at) = star {
            p = at + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A statement's `Condition`, for judging what it refuses: a Deny applies
/// only where every condition holds, so one with more than one says
/// nothing doctor can rely on.
enum Only<'a> {
    /// No condition: it applies to every request.
    None,
    /// One operator with one key.
    One(&'a str, &'a str, &'a Value),
    /// More: it applies to fewer requests than either says.
    More,
}

fn only_condition(s: &Value) -> Only<'_> {
    let Some(conditions) = s.get("Condition") else {
        return Only::None;
    };
    let Some(conditions) = conditions.as_object() else {
        return Only::More;
    };
    let mut all = conditions.iter().flat_map(|(op, keys)| {
        keys.as_object()
            .into_iter()
            .flat_map(move |keys| keys.iter().map(move |(k, v)| (op.as_str(), k.as_str(), v)))
    });
    match (all.next(), all.next(), conditions.is_empty()) {
        (_, _, true) => Only::None,
        (Some((op, key, value)), None, false)
            if conditions
                .values()
                .all(|k| k.as_object().is_some_and(|k| !k.is_empty())) =>
        {
            Only::One(op, key, value)
        }
        _ => Only::More,
    }
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

    fn set(p: &[&str]) -> Refused {
        Refused::AllBut(p.iter().map(|p| (*p).to_owned()).collect())
    }
    fn arns(p: &[&str]) -> Vec<String> {
        p.iter().map(|p| (*p).to_owned()).collect()
    }
    const OP: &str = "arn:aws:iam::1:role/op";
    const SSO: &str =
        "arn:aws:iam::1:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_0123";
    const DEPLOY: &str = "arn:aws:iam::1:role/ci";
    /// The template's OnlyTheDeployRewritesThisPolicy, for `DEPLOY`.
    const REWRITE: &str = r#"{"Sid": "OnlyTheDeployRewritesThisPolicy", "Effect": "Deny", "Principal": "*",
         "Action": ["sqs:SetQueueAttributes", "sqs:AddPermission", "sqs:RemovePermission"],
         "Resource": "arn:aws:sqs:us-east-1:1:dlq", "Condition": {"StringNotEquals": {"aws:PrincipalArn": ["arn:aws:iam::1:role/ci"]}}}"#;
    fn with_rewrite(policy: &str, statement: &str) -> String {
        policy.replacen(
            "\"Statement\": [",
            &format!("\"Statement\": [{statement},"),
            1,
        )
    }

    #[test]
    fn the_stacks_statements_close_all_three() {
        let all = Closed {
            plain_http: true,
            receive: set(&[OP]),
            move_task: set(&[]),
            ..Closed::default()
        };
        assert_eq!(Closed::of(Some(STACKS_DLQ), DLQ), Ok(all.clone()));
        assert_eq!(all.receive.against(&arns(&[OP])), PolicyVerdict::Closed);
        assert!(all.move_task.to_everyone());
        // No rewrite statement: open, which doctor judges only with
        // deploy principals.
        assert_eq!(
            all.set_attributes.against(&arns(&[DEPLOY])),
            PolicyVerdict::Open
        );
    }

    #[test]
    fn an_exemption_beyond_the_stacks_principals_is_named() {
        let sso = STACKS_DLQ.replace(
            r#""aws:PrincipalArn": "arn:aws:iam::1:role/op""#,
            &format!(r#""aws:PrincipalArn": ["{OP}", "{SSO}"]"#),
        );
        let closed = Closed::of(Some(&sso), DLQ).unwrap();
        assert_eq!(
            closed.receive.against(&arns(&[OP])),
            PolicyVerdict::Exempts {
                extra: arns(&[SSO]),
                missing: vec![]
            }
        );
        // Not the stack's at all: the consumer refused, another let in.
        let other = STACKS_DLQ.replace(OP, SSO);
        assert_eq!(
            Closed::of(Some(&other), DLQ)
                .unwrap()
                .receive
                .against(&arns(&[OP])),
            PolicyVerdict::Exempts {
                extra: arns(&[SSO]),
                missing: arns(&[OP])
            }
        );
        // A second, stricter Deny refuses the SSO role after all: every
        // Deny applies, so the exempted are those all of them exempt.
        let stricter = with_rewrite(
            &sso,
            r#"{"Effect": "Deny", "Principal": "*", "Action": "sqs:Receive*",
                "Condition": {"ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam::1:role/op"}}}"#,
        );
        assert_eq!(
            Closed::of(Some(&stricter), DLQ)
                .unwrap()
                .receive
                .against(&arns(&[OP])),
            PolicyVerdict::Closed
        );
        // Exact, order and duplicates aside.
        let twice = STACKS_DLQ.replace(
            r#""aws:PrincipalArn": "arn:aws:iam::1:role/op""#,
            &format!(r#""aws:PrincipalArn": ["{OP}", "{OP}"]"#),
        );
        assert_eq!(
            Closed::of(Some(&twice), DLQ)
                .unwrap()
                .receive
                .against(&arns(&[OP])),
            PolicyVerdict::Closed
        );
    }

    #[test]
    fn rewriting_the_policy_is_refused_to_all_but_the_deploy_principals() {
        let both = with_rewrite(STACKS_DLQ, REWRITE);
        let closed = Closed::of(Some(&both), DLQ).unwrap();
        for refused in [&closed.set_attributes, &closed.add_permission] {
            assert_eq!(refused.against(&arns(&[DEPLOY])), PolicyVerdict::Closed);
        }
        // Only SetQueueAttributes refused: AddPermission open.
        let set_only = with_rewrite(STACKS_DLQ, &REWRITE.replace(r#""sqs:AddPermission", "#, ""));
        let closed = Closed::of(Some(&set_only), DLQ).unwrap();
        assert_eq!(
            closed.set_attributes.against(&arns(&[DEPLOY])),
            PolicyVerdict::Closed
        );
        assert_eq!(
            closed.add_permission.against(&arns(&[DEPLOY])),
            PolicyVerdict::Open
        );
        // An admin exempted beside the deploy role: named.
        let admin = with_rewrite(
            STACKS_DLQ,
            &REWRITE.replace(
                r#"["arn:aws:iam::1:role/ci"]"#,
                &format!(r#"["{DEPLOY}", "{SSO}"]"#),
            ),
        );
        assert_eq!(
            Closed::of(Some(&admin), DLQ)
                .unwrap()
                .add_permission
                .against(&arns(&[DEPLOY])),
            PolicyVerdict::Exempts {
                extra: arns(&[SSO]),
                missing: vec![]
            }
        );
        // A pattern exempts everyone: open.
        let any = with_rewrite(
            STACKS_DLQ,
            &REWRITE
                .replace("StringNotEquals", "ArnNotLike")
                .replace("role/ci", "role/*"),
        );
        assert_eq!(
            Closed::of(Some(&any), DLQ).unwrap().set_attributes,
            Refused::Open
        );
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
        assert!(
            !Closed::of(Some(&conditional), DLQ)
                .unwrap()
                .move_task
                .to_everyone()
        );
    }

    #[test]
    fn wildcards_one_statement_and_case_are_read_as_iam_reads_them() {
        let one = r#"{"Statement": {"Effect": "Deny", "Principal": {"AWS": ["*"]}, "Action": "SQS:Receive*",
            "Condition": {"stringnotequals": {"AWS:PrincipalArn": ["arn:aws:iam::1:role/f"]}}}}"#;
        assert_eq!(
            Closed::of(Some(one), DLQ),
            Ok(Closed {
                receive: set(&["arn:aws:iam::1:role/f"]),
                ..Closed::default()
            })
        );
        let tls = r#"{"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "*",
            "Resource": "arn:aws:sqs:*:1:d?q", "Condition": {"Bool": {"aws:SecureTransport": false}}}]}"#;
        assert_eq!(
            Closed::of(Some(tls), DLQ),
            Ok(Closed {
                plain_http: true,
                ..Closed::default()
            })
        );
        // A queue's name is case-sensitive: a Deny on DLQ is not about dlq.
        let upper = STACKS_DLQ.replace(":dlq\"", ":DLQ\"");
        assert_eq!(Closed::of(Some(&upper), DLQ), Ok(Closed::default()));
        assert!(wildcard_match(b"sqs:?eceivemessage", b"sqs:receivemessage"));
        assert!(!wildcard_match(b"sqs:receive", b"sqs:receivemessage"));
        assert!(wildcard_match(b"*", b""));
        assert!(wildcard_match(b"a*b*c", b"aXbYbZc"));
        assert!(!wildcard_match(b"a*b*c", b"aXbYbZ"));
        // Linear: many stars against a long text that does not match.
        let stars = "*a".repeat(40);
        assert!(!wildcard_match(stars.as_bytes(), "a".repeat(39).as_bytes()));
    }

    #[test]
    fn a_deny_narrowed_by_another_condition_a_pattern_or_a_not_element_closes_nothing() {
        // Receiving refused only where a second condition holds too.
        let narrowed = STACKS_DLQ.replace(
            r#"{"aws:PrincipalArn": "arn:aws:iam::1:role/op"}"#,
            r#"{"aws:PrincipalArn": "arn:aws:iam::1:role/op", "aws:SourceVpce": "vpce-1"}"#,
        );
        assert_eq!(
            Closed::of(Some(&narrowed), DLQ).unwrap().receive,
            Refused::Open
        );
        let two_operators = STACKS_DLQ.replace(
            r#""Condition": {"Bool": {"aws:SecureTransport": "false"}}"#,
            r#""Condition": {"Bool": {"aws:SecureTransport": "false"}, "StringEquals": {"aws:SourceVpce": "vpce-1"}}"#,
        );
        assert!(!Closed::of(Some(&two_operators), DLQ).unwrap().plain_http);
        // Everyone exempted by a pattern or a policy variable, or nobody
        // named: nobody is refused, or nothing can be said.
        for every in [
            "*",
            "arn:aws:iam::*:role/op",
            "arn:aws:iam::1:role/*",
            "${aws:PrincipalArn}",
        ] {
            let exempt = STACKS_DLQ
                .replace("StringNotEquals", "StringNotLike")
                .replace("arn:aws:iam::1:role/op", every);
            assert!(
                Closed::of(Some(&exempt), DLQ).unwrap().receive == Refused::Open,
                "{every}"
            );
        }
        for none in ["[]", "null", "7"] {
            let empty = STACKS_DLQ.replace(r#""arn:aws:iam::1:role/op""#, none);
            assert!(
                Closed::of(Some(&empty), DLQ).unwrap().receive == Refused::Open,
                "{none}"
            );
        }
        assert!(wildcard_match(b"*b", b"*ab"));
        // NotResource: about every queue but this one.
        let elsewhere = STACKS_DLQ.replace("\"Resource\"", "\"NotResource\"");
        assert_eq!(Closed::of(Some(&elsewhere), DLQ), Ok(Closed::default()));
    }
}
