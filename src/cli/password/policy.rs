//! The resource policy `login-etl password` puts on each role's secret:
//! everybody is denied reading or changing it but the principals named
//! (the admin who ran the block, and `--reader-arn`), whatever their IAM
//! policies say, so a principal allowed `secretsmanager:GetSecretValue` on
//! `*` (PowerUser-style) reads no role's password. Public policies are
//! blocked when it is put (`BlockPublicPolicy`).

use serde_json::{Value, json};

/// The statement's id: how `password` knows the policy.
pub const SID: &str = "LoginEtlOnlyItsPrincipals";

/// The statement a stack's `ProtectDbSecret` puts on the ingest and
/// maintain secrets in place of [`SID`]'s (template.yaml): readable by the
/// function's (or maintenance function's) role and
/// `DbSecretReaderPrincipalArns` alone. README's block meets it when it
/// runs again after a deploy.
pub const STACK_SID: &str = "OnlyNamedRolesReadTheDatabaseSecret";

/// A role a login-etl stack made for its functions: CloudFormation names
/// it `<stack>-LoginEtlRole-<suffix>` (or `MaintenanceRole`).
fn stack_function_role(arn: &str) -> bool {
    arn.split_once(":role/")
        .map(|(_, path)| path.rsplit('/').next().unwrap_or(path))
        .is_some_and(|name| name.contains("-LoginEtlRole-") || name.contains("-MaintenanceRole-"))
}

/// What the policy denies to everybody else.
const ACTIONS: [&str; 4] = [
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecret",
    "secretsmanager:RotateSecret",
];

/// The policy naming `principals` (IAM ARNs).
pub fn only(principals: &[String]) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": SID,
            "Effect": "Deny",
            "Principal": "*",
            "Action": ACTIONS,
            "Resource": "*",
            "Condition": {"StringNotEquals": {"aws:PrincipalArn": principals}},
        }],
    })
    .to_string()
}

/// Whether `policy` (a secret's, as Secrets Manager returns it) is one
/// [`only`] made for principals all among `allowed`, or the one a stack
/// put ([`STACK_SID`]) for those and its functions' roles: its statement
/// denies reading to everybody but them. `Err` says what is wrong with it.
pub fn check(policy: &str, allowed: &[String]) -> Result<(), String> {
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
    if ours["Effect"] != "Deny" || !everybody || !denies_reading {
        return Err(
            "its resource policy's statement does not deny reading it to everybody else".into(),
        );
    }
    let named = strings(&ours["Condition"]["StringNotEquals"]["aws:PrincipalArn"]);
    if named.is_empty() {
        return Err("its resource policy names no principal".into());
    }
    let others: Vec<&String> = named
        .iter()
        .filter(|p| !allowed.contains(p) && !(stacks && stack_function_role(p)))
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
    Ok(())
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
/// names it: an assumed role's session is its role
/// (`arn:aws:sts::1:assumed-role/admins/alice` is
/// `arn:aws:iam::1:role/admins`); a user is itself.
pub fn principal_of(caller: &str) -> String {
    let parts: Vec<&str> = caller.splitn(6, ':').collect();
    if let [arn, partition, "sts", _, account, resource] = parts[..]
        && let Some(rest) = resource.strip_prefix("assumed-role/")
        && let Some((role, _session)) = rest.rsplit_once('/')
    {
        return format!("{arn}:{partition}:iam::{account}:role/{role}");
    }
    caller.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_passes_its_own_check_and_a_wider_or_foreign_one_does_not() {
        let admin = "arn:aws:iam::123456789012:role/admins".to_owned();
        let ops = "arn:aws:iam::123456789012:role/ops".to_owned();
        let allowed = [admin.clone(), ops.clone()];
        assert_eq!(check(&only(std::slice::from_ref(&admin)), &allowed), Ok(()));
        assert_eq!(check(&only(&allowed), &allowed), Ok(()));
        let wider = check(
            &only(&[admin.clone(), "arn:aws:iam::1:user/eve".into()]),
            &allowed,
        );
        assert!(wider.unwrap_err().contains("arn:aws:iam::1:user/eve"));
        // As Secrets Manager may return it: one statement, not a list; AWS's principal form.
        let normalized = json!({"Version": "2012-10-17", "Statement": {"Sid": SID, "Effect": "Deny",
            "Principal": {"AWS": "*"}, "Action": "secretsmanager:*", "Resource": "*",
            "Condition": {"StringNotEquals": {"aws:PrincipalArn": admin}}}});
        assert_eq!(check(&normalized.to_string(), &allowed), Ok(()));
        let allow_all = json!({"Statement": [{"Sid": SID, "Effect": "Allow", "Principal": "*",
            "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]});
        assert!(check(&allow_all.to_string(), &allowed).is_err());
        assert!(check(r#"{"Statement":[]}"#, &allowed).is_err());
        assert!(check("not json", &allowed).is_err());
        // A stack's, after a deploy: its functions' roles and the admin.
        let stack = |readers: &[&str]| {
            json!({"Statement": [{"Sid": STACK_SID, "Effect": "Deny", "Principal": "*",
                "Action": ["secretsmanager:GetSecretValue"], "Resource": "*",
                "Condition": {"StringNotEquals": {"aws:PrincipalArn": readers}}}]})
            .to_string()
        };
        let function = "arn:aws:iam::123456789012:role/login-etl-LoginEtlRole-AbC123";
        assert_eq!(check(&stack(&[function, &admin]), &allowed), Ok(()));
        assert!(check(&stack(&[function, "arn:aws:iam::1:role/other"]), &allowed).is_err());
        // A role merely named like one is not a stack's.
        let mut ours = serde_json::from_str::<Value>(&only(&[admin.clone()])).unwrap();
        ours["Statement"][0]["Condition"]["StringNotEquals"]["aws:PrincipalArn"] =
            json!([admin, function]);
        assert!(
            check(&ours.to_string(), &allowed).is_err(),
            "only a stack's policy names its roles"
        );
    }

    #[test]
    fn an_assumed_roles_session_is_its_role() {
        assert_eq!(
            principal_of("arn:aws:sts::123456789012:assumed-role/admins/alice@example.com"),
            "arn:aws:iam::123456789012:role/admins"
        );
        assert_eq!(
            principal_of("arn:aws:iam::123456789012:user/bob"),
            "arn:aws:iam::123456789012:user/bob"
        );
        assert_eq!(
            principal_of("arn:aws-cn:sts::123456789012:assumed-role/a/b"),
            "arn:aws-cn:iam::123456789012:role/a"
        );
    }
}
