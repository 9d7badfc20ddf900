//! Settings a role stored for itself (`ALTER ROLE CURRENT_USER [IN
//! DATABASE …] SET …`). Any role may store them, they apply to every later
//! session of that role and outlive a password rotation: a stolen
//! credential could leave a `search_path` that steers the real commands to
//! objects of its own, or a `DateStyle` that changes what dates read as.
//! A session that starts under one that changes what login-etl's
//! statements do is refused at connect, with the statement that resets it;
//! doctor lists them for every login-etl role. The owner's functions pin
//! their own settings (`table::privileges::FUNCTION_SETTINGS`).

/// The schema of the `user_logins` the tables' owner made: one the
/// session's own role made (where it may create) comes only when there is
/// no other, then the session's current schema (two deployments in one
/// database), then by name; a temporary table (any role may make one), a
/// schema the session may not use, and tables another deployment's setup
/// owns (the owner's comment names other secrets than the session role's:
/// a second stack's roles before its first migrate) never count. Every
/// name qualified: it runs under whatever search path was stored.
pub(crate) const OWNERS_SCHEMA_SQL: &str = "SELECT n.nspname \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
     WHERE c.relname OPERATOR(pg_catalog.=) 'user_logins_rows' \
       AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog.\"char\"[]) \
       AND c.relpersistence OPERATOR(pg_catalog.<>) 't'::pg_catalog.\"char\" \
       AND pg_catalog.has_schema_privilege(n.oid, 'USAGE') \
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles me \
             WHERE me.rolname OPERATOR(pg_catalog.=) CURRENT_USER \
               AND pg_catalog.shobj_description(me.oid, 'pg_authid') OPERATOR(pg_catalog.~~) 'login-etl setup, %' \
               AND pg_catalog.shobj_description(c.relowner, 'pg_authid') OPERATOR(pg_catalog.~~) 'login-etl setup, %' \
               AND pg_catalog.shobj_description(c.relowner, 'pg_authid') \
                   OPERATOR(pg_catalog.<>) pg_catalog.shobj_description(me.oid, 'pg_authid')) \
     ORDER BY c.relowner OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r \
                WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER), \
              n.nspname OPERATOR(pg_catalog.<>) pg_catalog.current_schema(), n.nspname \
     LIMIT 1";

/// The result-changing settings the session holds from a role's own
/// defaults (`user`) or its defaults in this database (`database user`),
/// with where the owner's tables are. An admin's own settings (a superuser's or a CREATEROLE
/// role's, which no login-etl role is) are its business: doctor, which an
/// admin runs, pins what it reads by itself.
fn stored_sql() -> String {
    format!(
        "SELECT s.name, s.setting, s.source, CURRENT_USER::pg_catalog.text, \
         pg_catalog.current_database()::pg_catalog.text, ({OWNERS_SCHEMA_SQL}) \
         FROM pg_catalog.pg_settings s \
         WHERE s.source OPERATOR(pg_catalog.=) ANY (ARRAY['user', 'database user']::pg_catalog.text[]) \
           AND pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) ANY (ARRAY['search_path', 'datestyle', \
               'intervalstyle', 'timezone', 'synchronous_commit', 'standard_conforming_strings', \
               'transform_null_equals', 'array_nulls', 'default_transaction_isolation']::pg_catalog.text[]) \
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER \
                           AND (r.rolsuper OR r.rolcreaterole)) \
         ORDER BY s.name"
    )
}

/// What a stored `name = value` would change, or `None` when it is
/// harmless: a search path of one schema (README's block sets each role's
/// to the tables' schema), `pg_catalog` before it and `pg_temp` after it
/// allowed; ISO dates, the standard interval style, UTC; any durable
/// commit level; the standard string and NULL semantics.
pub fn stored_setting_problem(name: &str, value: &str) -> Option<&'static str> {
    // As typed (pg_db_role_setting) or as PostgreSQL shows it (pg_settings):
    // `false`, `0`, `no` and `off` are one value, and names and zones any case.
    let v = value.trim().trim_matches('\'').to_ascii_lowercase();
    let boolean = |on: bool| {
        let truthy = matches!(v.as_str(), "on" | "true" | "yes" | "1" | "t" | "y");
        let falsy = matches!(v.as_str(), "off" | "false" | "no" | "0" | "f" | "n");
        if on { truthy } else { falsy }
    };
    let bad = match name.to_ascii_lowercase().as_str() {
        "search_path" => !single_schema(value.trim()),
        "datestyle" => !v.starts_with("iso"),
        "intervalstyle" => v != "postgres",
        "timezone" => !matches!(
            v.as_str(),
            "utc" | "etc/utc" | "gmt" | "etc/gmt" | "uct" | "zulu" | "etc/uct" | "etc/zulu"
        ),
        "synchronous_commit" => boolean(false),
        "standard_conforming_strings" => boolean(false),
        "transform_null_equals" => boolean(true),
        "array_nulls" => boolean(false),
        // The write check and the locks assume each statement sees what
        // committed before it (READ COMMITTED).
        "default_transaction_isolation" => v != "read committed",
        _ => false,
    };
    bad.then_some(match name.to_ascii_lowercase().as_str() {
        "search_path" => {
            "it resolves names through more than the tables' schema, so objects elsewhere could stand in for login-etl's"
        }
        "synchronous_commit" => {
            "a commit would be acknowledged before it is durable: a batch SQS deletes could be lost in a crash"
        }
        _ => "it changes what login-etl's statements read or compute",
    })
}

/// One schema, optionally after `pg_catalog` and before `pg_temp`.
fn single_schema(path: &str) -> bool {
    let mut parts: Vec<&str> = path.split(',').map(str::trim).collect();
    if parts.first() == Some(&"pg_catalog") {
        parts.remove(0);
    }
    if parts.len() == 2 && parts[1] == "pg_temp" {
        parts.pop();
    }
    matches!(parts.as_slice(), [one] if !one.is_empty() && *one != "pg_temp" && !one.starts_with("pg_temp_"))
}

/// The schema a stored one-schema `search_path` names for `role`
/// (`"$user"` is the role's name), unquoted as PostgreSQL folds it; `None`
/// for any other path (which [`stored_setting_problem`] refuses).
fn path_schema(path: &str, role: &str) -> Option<String> {
    if !single_schema(path.trim()) {
        return None;
    }
    let one = path
        .split(',')
        .map(str::trim)
        .find(|p| *p != "pg_catalog" && *p != "pg_temp")?;
    let name = match one.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => one.to_lowercase(),
    };
    Some(if name == "$user" {
        role.to_owned()
    } else {
        name
    })
}

/// A stored `search_path` of one schema that is not `owners`' (the schema
/// of login-etl's tables): where the role may create, a plant.
pub fn path_elsewhere(path: &str, role: &str, owners: &str) -> bool {
    path_schema(path, role).is_some_and(|schema| schema != owners)
}

/// The statement an admin runs to reset `name` for `role`: in `database`
/// when it was stored there (`source` = `database user`).
pub fn reset_statement(role: &str, database: &str, source: &str, name: &str) -> String {
    let role = postgres_protocol::escape::escape_identifier(role);
    if source == "database user" {
        let database = postgres_protocol::escape::escape_identifier(database);
        format!("ALTER ROLE {role} IN DATABASE {database} RESET {name}")
    } else {
        format!("ALTER ROLE {role} RESET {name}")
    }
}

/// The admin's fix for a stored `search_path`: the tables' schema
/// (`owners`) set as README's block sets it, in this database; a RESET
/// where the tables are in `public` (the default path finds them) or not
/// found.
pub fn search_path_fix(role: &str, database: &str, source: &str, owners: Option<&str>) -> String {
    match owners {
        Some(schema) if schema != "public" => format!(
            "{}; ALTER ROLE {} IN DATABASE {} SET search_path = {}",
            reset_statement(role, database, source, "search_path"),
            postgres_protocol::escape::escape_identifier(role),
            postgres_protocol::escape::escape_identifier(database),
            postgres_protocol::escape::escape_identifier(schema)
        ),
        _ => reset_statement(role, database, source, "search_path"),
    }
}

/// The stored settings of this session that change what login-etl does,
/// as the refusal's cause (names and values only: settings, never data),
/// each with the admin's RESET; `None` when there is none.
pub(crate) async fn refusal(
    client: &tokio_postgres::Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    let (mut found, mut resets) = (Vec::new(), Vec::new());
    // The simple protocol: no prepared statement, which a
    // transaction-mode pooler would not keep (docs/semantics.md, "Delivery semantics").
    for message in client.simple_query(&stored_sql()).await? {
        let tokio_postgres::SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        let text = |i: usize| row.get(i).unwrap_or_default().to_owned();
        let (name, value, source, role, database) = (text(0), text(1), text(2), text(3), text(4));
        // One schema, but not the one the owner's tables are in: where a
        // role may create (`public` before PostgreSQL 15), a plant.
        let owners = row.get(5);
        let elsewhere =
            name == "search_path" && owners.is_some_and(|o| path_elsewhere(&value, &role, o));
        let why = stored_setting_problem(&name, &value).or(elsewhere.then_some(
            "its first schema is not the one login-etl's tables are in, so objects there could stand in for login-etl's",
        ));
        if let Some(why) = why {
            let scope = if source == "database user" {
                " in this database"
            } else {
                ""
            };
            found.push(format!("{name} = '{value}'{scope} ({why})"));
            resets.push(if name == "search_path" {
                search_path_fix(&role, &database, &source, owners)
            } else {
                reset_statement(&role, &database, &source, &name)
            });
        }
    }
    Ok((!found.is_empty()).then(|| {
        format!(
            "the role stores its own {} (ALTER ROLE … SET); an admin resets it: {}",
            found.join(", "),
            resets.join("; ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_schema_passes_and_more_or_pg_temp_first_do_not() {
        for ok in [
            "public",
            "\"Login ETL\"",
            "pg_catalog, login_etl",
            "pg_catalog, login_etl, pg_temp",
            "login_etl, pg_temp",
        ] {
            assert_eq!(stored_setting_problem("search_path", ok), None, "{ok}");
        }
        for bad in [
            "pg_temp, public",
            "public, login_etl",
            "\"$user\", public",
            "pg_temp",
            "",
            "pg_catalog",
        ] {
            assert!(
                stored_setting_problem("search_path", bad).is_some(),
                "{bad}"
            );
        }
    }

    #[test]
    fn result_changing_values_are_named_and_harmless_ones_pass() {
        assert!(stored_setting_problem("DateStyle", "SQL, DMY").is_some());
        assert_eq!(stored_setting_problem("DateStyle", "ISO, DMY"), None);
        assert!(stored_setting_problem("synchronous_commit", "off").is_some());
        assert_eq!(stored_setting_problem("synchronous_commit", "local"), None);
        assert!(stored_setting_problem("TimeZone", "Asia/Tokyo").is_some());
        assert_eq!(stored_setting_problem("TimeZone", "UTC"), None);
        assert!(stored_setting_problem("transform_null_equals", "on").is_some());
        // As typed in pg_db_role_setting: every spelling of a boolean, any case.
        assert!(stored_setting_problem("synchronous_commit", "false").is_some());
        assert!(stored_setting_problem("transform_null_equals", "1").is_some());
        assert_eq!(stored_setting_problem("TimeZone", "utc"), None);
        assert_eq!(stored_setting_problem("work_mem", "64MB"), None);
        assert!(
            stored_setting_problem("default_transaction_isolation", "repeatable read").is_some()
        );
        assert_eq!(
            stored_setting_problem("default_transaction_isolation", "READ COMMITTED"),
            None
        );
    }

    #[test]
    fn a_one_schema_path_is_compared_with_the_tables_schema_by_the_name_it_resolves_to() {
        // pg_catalog first is fine: current_schema() would say pg_catalog.
        assert!(!path_elsewhere(
            "pg_catalog, login_etl",
            "ingest",
            "login_etl"
        ));
        assert!(!path_elsewhere("login_etl, pg_temp", "ingest", "login_etl"));
        assert!(!path_elsewhere("\"$user\"", "login_etl", "login_etl"));
        assert!(!path_elsewhere("\"Login ETL\"", "ingest", "Login ETL"));
        assert!(
            !path_elsewhere("LOGIN_ETL", "ingest", "login_etl"),
            "unquoted names fold"
        );
        assert!(path_elsewhere("public", "ingest", "login_etl"));
        assert!(path_elsewhere("\"$user\"", "ingest", "login_etl"));
        assert!(path_elsewhere("pg_catalog, mine", "ingest", "login_etl"));
        // Not one schema: refused as such, not as elsewhere.
        assert!(!path_elsewhere("public, login_etl", "ingest", "login_etl"));
    }

    #[test]
    fn the_reset_names_the_scope_it_was_stored_in() {
        assert_eq!(
            reset_statement("ingest", "Prod DB", "database user", "search_path"),
            "ALTER ROLE \"ingest\" IN DATABASE \"Prod DB\" RESET search_path"
        );
        assert_eq!(
            reset_statement("ingest", "db", "user", "datestyle"),
            "ALTER ROLE \"ingest\" RESET datestyle"
        );
    }
}
