-- The schema's state, as the last `migrate` left it, in a table the owner
-- writes (issue 65, item 4): which migrations (version), which profile,
-- and which owner's functions (the tag of every function file of that
-- profile and version). The schema guard, doctor and migrate read it
-- (src/table/schema/state.rs). Before it, binaries read the version and
-- the profile out of the bodies of login_etl_schema_version() and
-- login_etl_profile(), which stay for 0.2.0's binaries. One row, written
-- at the end of each migrate that changed anything.
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
