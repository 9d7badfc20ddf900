//! The resource policy `login-etl password` puts on each role's secret:
//! everybody is denied reading or changing its value but the principals
//! named (the admin who ran the block, and `--reader-arn`), whatever their
//! IAM policies say, so a principal allowed `secretsmanager:GetSecretValue`
//! on `*` reads no role's password. Public policies are blocked when it is
//! put (`BlockPublicPolicy`). Rewriting the policy itself is left to IAM
//! (`secretsmanager:PutResourcePolicy`): the stack's `ProtectDbSecret`
//! rewrites it on the ingest and maintain secrets at its deploy, and
//! CloudTrail records every rewrite (the stack's `AccessPolicyChangedRule`
//! alarms on those of its secrets).

use serde_json::{Value, json};

/// The statement's id: how `password` knows the policy.
pub const SID: &str = "LoginEtlOnlyItsPrincipals";

/// The statement a stack's `ProtectDbSecret` puts on the ingest and
/// maintain secrets in place of [`SID`]'s (template.yaml): readable by the
/// function's (or maintenance function's) role and
/// `DbSecretReaderPrincipalArns` alone. README's block meets it when it
/// runs again after a deploy.
pub const STACK_SID: &str = "OnlyNamedRolesReadTheDatabaseSecret";

/// A role a login-etl stack in `account` made for its functions:
/// CloudFormation names it `<stack>-LoginEtlRole-<suffix>` (or
/// `MaintenanceRole`, or `SetupRole`: the one that made the secret).
fn stack_function_role(arn: &str, account: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts[..], [_, _, "iam", "", a, resource] if a == account && resource.starts_with("role/"))
        && arn.rsplit('/').next().is_some_and(|name| {
            ["-LoginEtlRole-", "-MaintenanceRole-", "-SetupRole-"]
                .iter()
                .any(|role| name.contains(role))
        })
}

/// Whether `earlier` is the setup role of an earlier stack of the name
/// `setup`'s stack has: another role of the same account and partition,
/// named `<stack>-SetupRole-<suffix>` with the same part before the suffix
/// (CloudFormation's random one; a new stack of the name gets a new role).
pub fn same_stacks_setup_role(earlier: &str, setup: &str) -> bool {
    let stem = |arn: &str| -> Option<(String, String, String)> {
        let account = account_of(arn);
        let name = arn.rsplit('/').next()?;
        if !stack_function_role(arn, account) || !name.contains("-SetupRole-") {
            return None;
        }
        let partition = arn.split(':').nth(1)?;
        let stem = name.rsplit_once('-')?.0;
        Some((partition.to_owned(), account.to_owned(), stem.to_owned()))
    };
    earlier != setup && stem(earlier).is_some_and(|e| stem(setup) == Some(e))
}

/// The account of an ARN (its fifth field).
fn account_of(arn: &str) -> &str {
    arn.split(':').nth(4).unwrap_or("")
}

/// What the policy denies to everybody else.
const ACTIONS: [&str; 4] = [
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecret",
    "secretsmanager:RotateSecret",
];

/// The second statement's id, where rewriters are named.
pub const REWRITE_SID: &str = "OnlyTheDeployRewritesThisPolicy";

/// What that statement denies to everybody but the rewriters: the stack's
/// own secrets' statement of that id, for `DeployPrincipalArns`.
const REWRITES: [&str; 4] = [
    "secretsmanager:PutResourcePolicy",
    "secretsmanager:DeleteResourcePolicy",
    "secretsmanager:DeleteSecret",
    "secretsmanager:UpdateSecretVersionStage",
];

/// The policy naming `principals` (IAM ARNs); where `rewriters` are
/// named (a stack's deploy roles and its setup's), also the policy's
/// rewrite and the secret's deletion denied to everybody else.
pub fn only(principals: &[String], rewriters: &[String]) -> String {
    let mut statements = vec![json!({
        "Sid": SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": ACTIONS,
        "Resource": "*",
        "Condition": {"ArnNotLike": {"aws:PrincipalArn": principals}},
    })];
    if !rewriters.is_empty() {
        statements.push(json!({
            "Sid": REWRITE_SID,
            "Effect": "Deny",
            "Principal": "*",
            "Action": REWRITES,
            "Resource": "*",
            "Condition": {"ArnNotLike": {"aws:PrincipalArn": rewriters}},
        }));
    }
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// What a secret's policy is, as [`check`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyKind {
    /// One [`only`] made, naming these principals (all among the allowed).
    Ours(Vec<String>),
    /// The one a stack put ([`STACK_SID`]): read, never rewritten.
    Stacks,
    /// One a stack's setup resource made ([`only`], naming its own
    /// `-SetupRole-` and its functions' roles beside this admin): read;
    /// rewritten only by a stack's setup (a new stack of that name has new
    /// roles).
    Setup,
}

/// Whether `policy` denies reading the secret to everybody but the
/// principals it names, as [`only`] or a stack ([`STACK_SID`]) writes it:
/// whether it is a stack's, and the principals named. `Err` says what is
/// wrong with it. What `doctor` checks of the secret it connects with.
pub fn protects(policy: &str) -> Result<(bool, Vec<String>), String> {
    let doc: Value =
        serde_json::from_str(policy).map_err(|_| "its resource policy is not JSON".to_owned())?;
    let statements = match &doc["Statement"] {
        Value::Array(list) => list.clone(),
        one @ Value::Object(_) => vec![one.clone()],
        _ => Vec::new(),
    };
    let ours = statements
        .iter()
        .find(|s| s["Sid"] == SID || s["Sid"] == STACK_SID)
        .ok_or_else(|| {
            "its resource policy is neither the one login-etl password puts nor a stack's"
                .to_owned()
        })?;
    let stacks = ours["Sid"] == STACK_SID;
    let everybody = ours["Principal"] == "*" || ours["Principal"]["AWS"] == "*";
    let denies_reading = strings(&ours["Action"])
        .iter()
        .any(|a| a == "secretsmanager:GetSecretValue" || a == "secretsmanager:*");
    let condition = ours["Condition"].as_object();
    let operators: Vec<&String> = condition.map(|c| c.keys().collect()).unwrap_or_default();
    let keys_only_principal = condition.is_some_and(|c| {
        c.len() == 1
            && c.values().all(|k| {
                k.as_object()
                    .is_some_and(|k| k.len() == 1 && k.contains_key("aws:PrincipalArn"))
            })
    });
    if ours["Effect"] != "Deny"
        || !everybody
        || !denies_reading
        || ours["Resource"] != "*"
        || !keys_only_principal
        || !matches!(operators[..], [op] if op == "ArnNotLike" || op == "StringNotEquals")
    {
        return Err(
            "its resource policy's statement does not deny reading it to everybody else (on the whole secret, by aws:PrincipalArn alone)".into(),
        );
    }
    let named = strings(&ours["Condition"][operators[0].as_str()]["aws:PrincipalArn"]);
    if named.is_empty() {
        return Err("its resource policy names no principal".into());
    }
    // A wildcard that stands for every principal excepts everybody (a
    // role's path, `role/*/name`, is fine).
    if let Some(all) = named.iter().find(|p| p.ends_with('*')) {
        return Err(format!(
            "its resource policy excepts {all}, a pattern that stands for many principals"
        ));
    }
    Ok((stacks, named))
}

/// Whether `policy` (a secret's, as Secrets Manager returns it) is one
/// [`only`] made for principals all among `allowed`, or the one a stack
/// put ([`STACK_SID`]) for those and its functions' roles in the admin's
/// account: its statement denies reading to everybody but them, on the
/// whole secret, with no other condition to narrow it. `Err` says what is
/// wrong with it.
pub fn check(policy: &str, allowed: &[String]) -> Result<PolicyKind, String> {
    let (stacks, named) = protects(policy)?;
    let account = allowed.first().map_or("", |a| account_of(a));
    // A stack's setup resource names its own role (`-SetupRole-`), its
    // functions' and the admins it was given: as trusted as a stack's own
    // policy ([`STACK_SID`]).
    let setup = !stacks
        && named.iter().any(|p| {
            stack_function_role(p, account)
                && p.rsplit('/')
                    .next()
                    .is_some_and(|n| n.contains("-SetupRole-"))
        });
    // An allowed pattern (this admin's role with any path, `role/*/name`)
    // takes the role named with its path (IAM Identity Center's
    // `role/aws-reserved/sso.amazonaws.com/...`): role names are unique
    // in an account, whatever the path.
    // Only that form: a --reader-arn with a wildcard of its own takes
    // nobody it does not name.
    let path_pattern = |a: &str| {
        a.split_once(":role/*/")
            .is_some_and(|(_, name)| !name.contains(['*', '?', '/']))
    };
    let is_allowed = |p: &str| {
        allowed.iter().any(|a| {
            a == p
                || (path_pattern(a)
                    && crate::cli::queue_policy::wildcard_match(a.as_bytes(), p.as_bytes()))
        })
    };
    let others: Vec<&String> = named
        .iter()
        .filter(|p| !(is_allowed(p) || ((stacks || setup) && stack_function_role(p, account))))
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "its resource policy lets {} read it too (not this admin, nor a --reader-arn)",
            others
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(if stacks {
        PolicyKind::Stacks
    } else if setup {
        PolicyKind::Setup
    } else {
        PolicyKind::Ours(named)
    })
}

/// A policy field that is a string or a list of strings.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The IAM principal an STS caller ARN stands for, as `aws:PrincipalArn`
/// names it (patterns for `ArnNotLike`): an assumed role's session is its
/// role, whose path the session's ARN does not show
/// (`arn:aws:sts::1:assumed-role/admins/alice` is `arn:aws:iam::1:role/admins`
/// or `arn:aws:iam::1:role/*/admins`, as IAM Identity Center's roles under
/// `aws-reserved/sso.amazonaws.com/` are); a user is itself.
pub fn principal_of(caller: &str) -> Vec<String> {
    let parts: Vec<&str> = caller.splitn(6, ':').collect();
    if let [arn, partition, "sts", _, account, resource] = parts[..]
        && let Some(rest) = resource.strip_prefix("assumed-role/")
        && let Some((role, _session)) = rest.rsplit_once('/')
    {
        let base = format!("{arn}:{partition}:iam::{account}:role/");
        return vec![format!("{base}{role}"), format!("{base}*/{role}")];
    }
    vec![caller.to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_passes_its_own_check_and_a_wider_or_foreign_one_does_not() {
        let admin = "arn:aws:iam::123456789012:role/admins".to_owned();
        let ops = "arn:aws:iam::123456789012:role/ops".to_owned();
        let allowed = [admin.clone(), ops.clone()];
        assert_eq!(
            check(&only(std::slice::from_ref(&admin), &[]), &allowed),
            Ok(PolicyKind::Ours(vec![admin.clone()]))
        );
        assert!(check(&only(&allowed, &[]), &allowed).is_ok());
        let wider = check(
            &only(&[admin.clone(), "arn:aws:iam::1:user/eve".into()], &[]),
            &allowed,
        );
        assert!(wider.unwrap_err().contains("arn:aws:iam::1:user/eve"));
        // As Secrets Manager may return it: one statement, not a list; AWS's principal form.
        let normalized = json!({"Version": "2012-10-17", "Statement": {"Sid": SID, "Effect": "Deny",
            "Principal": {"AWS": "*"}, "Action": "secretsmanager:*", "Resource": "*",
            "Condition": {"ArnNotLike": {"aws:PrincipalArn": admin}}}});
        assert!(check(&normalized.to_string(), &allowed).is_ok());
        let allow_all = json!({"Statement": [{"Sid": SID, "Effect": "Allow", "Principal": "*",
            "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]});
        assert!(check(&allow_all.to_string(), &allowed).is_err());
        // A condition that narrows the Deny (another key, another resource) is not ours.
        let mut narrowed: Value =
            serde_json::from_str(&only(std::slice::from_ref(&admin), &[])).unwrap();
        narrowed["Statement"][0]["Condition"]["StringEquals"] = json!({"aws:SourceVpc": "vpc-1"});
        assert!(check(&narrowed.to_string(), &allowed).is_err());
        let mut elsewhere: Value =
            serde_json::from_str(&only(std::slice::from_ref(&admin), &[])).unwrap();
        elsewhere["Statement"][0]["Resource"] =
            json!("arn:aws:secretsmanager:us-east-1:1:secret:other");
        assert!(check(&elsewhere.to_string(), &allowed).is_err());
        assert!(check(r#"{"Statement":[]}"#, &allowed).is_err());
        assert!(check("not json", &allowed).is_err());
        // A stack's, after a deploy: its functions' roles of this account, and the admin.
        let stack = |readers: &[&str]| {
            json!({"Statement": [{"Sid": STACK_SID, "Effect": "Deny", "Principal": "*",
                "Action": ["secretsmanager:GetSecretValue"], "Resource": "*",
                "Condition": {"StringNotEquals": {"aws:PrincipalArn": readers}}}]})
            .to_string()
        };
        let function = "arn:aws:iam::123456789012:role/login-etl-LoginEtlRole-AbC123";
        assert_eq!(
            check(&stack(&[function, &admin]), &allowed),
            Ok(PolicyKind::Stacks)
        );
        assert!(check(&stack(&[function, "arn:aws:iam::1:role/other"]), &allowed).is_err());
        let foreign = "arn:aws:iam::999999999999:role/x-LoginEtlRole-Y";
        assert!(
            check(&stack(&[foreign]), &allowed).is_err(),
            "another account's role"
        );
        // A role merely named like one is not a stack's.
        let mut ours =
            serde_json::from_str::<Value>(&only(std::slice::from_ref(&admin), &[])).unwrap();
        ours["Statement"][0]["Condition"]["ArnNotLike"]["aws:PrincipalArn"] =
            json!([admin, function]);
        assert!(
            check(&ours.to_string(), &allowed).is_err(),
            "only a stack's policy names its roles"
        );
        // What a stack's setup resource made: its own role, its function's.
        let setup = "arn:aws:iam::123456789012:role/login-etl-SetupRole-XyZ789";
        ours["Statement"][0]["Condition"]["ArnNotLike"]["aws:PrincipalArn"] =
            json!([setup, function]);
        assert_eq!(check(&ours.to_string(), &allowed), Ok(PolicyKind::Setup));
        ours["Statement"][0]["Condition"]["ArnNotLike"]["aws:PrincipalArn"] =
            json!([setup, function, "arn:aws:iam::123456789012:role/eve"]);
        assert!(
            check(&ours.to_string(), &allowed).is_err(),
            "and nobody else"
        );
    }

    #[test]
    fn rewriters_named_add_a_statement_denying_everybody_else_the_rewrite_and_the_deletion() {
        let setup = "arn:aws:iam::123456789012:role/login-etl-SetupRole-XyZ789".to_owned();
        let function = "arn:aws:iam::123456789012:role/login-etl-LoginEtlRole-AbC123".to_owned();
        let deploy = "arn:aws:iam::123456789012:role/ci-deploy".to_owned();
        let readers = [setup.clone(), function];
        let alone: Value = serde_json::from_str(&only(&readers, &[])).unwrap();
        assert_eq!(alone["Statement"].as_array().unwrap().len(), 1);
        let policy = only(&readers, &[deploy.clone(), setup.clone()]);
        let doc: Value = serde_json::from_str(&policy).unwrap();
        let rewrite = &doc["Statement"][1];
        assert_eq!(rewrite["Sid"], REWRITE_SID);
        assert_eq!(
            (&rewrite["Effect"], &rewrite["Principal"]),
            (&json!("Deny"), &json!("*"))
        );
        assert_eq!(rewrite["Action"], json!(REWRITES));
        assert_eq!(
            rewrite["Condition"]["ArnNotLike"]["aws:PrincipalArn"],
            json!([deploy, setup])
        );
        // Read as it was: the reading statement decides, by its own id.
        assert_eq!(
            check(&policy, &["arn:aws:iam::123456789012:role/admins".into()]),
            Ok(PolicyKind::Setup)
        );
    }

    #[test]
    fn an_admins_role_named_with_its_path_is_the_admin() {
        let admin =
            principal_of("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Admin_0a1b/alice");
        let sso = "arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_0a1b";
        let setup = "arn:aws:iam::123456789012:role/login-etl-SetupRole-XyZ789";
        let policy = only(&[setup.into(), sso.into()], &[]);
        assert_eq!(check(&policy, &admin), Ok(PolicyKind::Setup));
        // Another role of that path is not.
        let other = only(&[setup.into(), sso.replace("Admin_0a1b", "Other_9z")], &[]);
        assert!(check(&other, &admin).is_err());
        // Nor does a reader given as a wildcard take a role it does not name.
        let eve = "arn:aws:iam::123456789012:role/eve";
        let wide = [
            admin.clone(),
            vec!["arn:aws:iam::123456789012:role/*".into()],
        ]
        .concat();
        assert!(check(&only(&[setup.into(), eve.into()], &[]), &wide).is_err());
    }

    #[test]
    fn an_earlier_stack_of_the_same_name_is_told_by_its_setup_roles_name() {
        let now = "arn:aws:iam::123456789012:role/login-etl-SetupRole-NeW456";
        let earlier = "arn:aws:iam::123456789012:role/login-etl-SetupRole-OlD123";
        assert!(same_stacks_setup_role(earlier, now));
        assert!(!same_stacks_setup_role(now, now), "itself");
        for other in [
            "arn:aws:iam::123456789012:role/other-SetupRole-OlD123",
            "arn:aws:iam::999999999999:role/login-etl-SetupRole-OlD123",
            "arn:aws-cn:iam::123456789012:role/login-etl-SetupRole-OlD123",
            "arn:aws:iam::123456789012:role/login-etl-LoginEtlRole-OlD123",
            "arn:aws:iam::123456789012:user/login-etl-SetupRole-OlD123",
        ] {
            assert!(!same_stacks_setup_role(other, now), "{other}");
        }
    }

    #[test]
    fn an_assumed_roles_session_is_its_role_with_or_without_a_path() {
        assert_eq!(
            principal_of("arn:aws:sts::123456789012:assumed-role/admins/alice@example.com"),
            [
                "arn:aws:iam::123456789012:role/admins",
                "arn:aws:iam::123456789012:role/*/admins"
            ]
        );
        assert_eq!(
            principal_of("arn:aws:iam::123456789012:user/bob"),
            ["arn:aws:iam::123456789012:user/bob"]
        );
        assert_eq!(
            principal_of("arn:aws-cn:sts::123456789012:assumed-role/a/b")[0],
            "arn:aws-cn:iam::123456789012:role/a"
        );
    }
}
