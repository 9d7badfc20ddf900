-- profile: all
-- The deployment's retention, as the tables' owner records it (`login-etl
-- migrate` given RETENTION_DAYS): the maintain role's functions refuse a
-- cutoff inside it (login_etl_check_cutoff), so a stolen maintain
-- credential deletes nothing the deployment keeps. keep_days NULL keeps
-- everything: a new database, and each one from before this migration
-- until its owner records its retention. No role but the owner touches it.
CREATE TABLE IF NOT EXISTS user_logins_retention(
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    keep_days   integer CHECK (keep_days >= 1),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    recorded_by text NOT NULL DEFAULT session_user
);
INSERT INTO user_logins_retention (singleton) VALUES (true) ON CONFLICT DO NOTHING;
