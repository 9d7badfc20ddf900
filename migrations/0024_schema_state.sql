-- profile: all
-- The schema's state, as the last `migrate` left it, in a table the owner
-- writes (issue 65, item 4): which migrations (version), which profile,
-- and which owner's functions (the tag of every function file of that
-- profile and version). The schema guard, doctor and migrate read it
-- (src/table/schema/state.rs). Before it, binaries read the version and
-- the profile out of the bodies of login_etl_schema_version() and
-- login_etl_profile(), which stay for 0.2.0's binaries. One row, written
-- at the end of each migrate that changed anything.

-- A table of that name the tables' owner did not make (another role's,
-- from when it could create in the schema, or not a table at all) would be
-- taken for the record, its triggers and defaults run by migrate: refused,
-- with what to do.
DO $login_etl_state$
BEGIN
    IF to_regclass('user_logins_schema') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_class c WHERE c.oid = to_regclass('user_logins_schema')
           AND c.relkind = 'r' AND c.relowner = (SELECT relowner FROM pg_class WHERE oid = to_regclass('user_logins'))) THEN
        RAISE EXCEPTION 'user_logins_schema exists and is not a table of the tables'' owner: login-etl did not make it'
            USING ERRCODE = 'LE014',
                  HINT = 'find who made it (\d+ user_logins_schema in psql), and drop it as that role once you know why it is there; then run login-etl migrate again';
    END IF;
END
$login_etl_state$;
CREATE TABLE IF NOT EXISTS user_logins_schema (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    version integer NOT NULL,
    profile text NOT NULL CHECK (profile IN ('masking', 'full')),
    functions text NOT NULL,
    migrated_at timestamptz NOT NULL DEFAULT now()
);
-- Read by every role's schema guard and by doctor, whoever runs it (an
-- RDS admin need not be a member of the owner). Nothing in it is secret:
-- the catalog shows every role the same (the tables, the functions).
REVOKE ALL ON user_logins_schema FROM PUBLIC;
GRANT SELECT ON user_logins_schema TO PUBLIC;
