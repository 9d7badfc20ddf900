-- profile: all
-- Locks only login-etl's roles can hold (issue 63, item 6). An advisory
-- lock is any role's to take: a stolen reader's credential holding
-- pg_advisory_lock(<key>) in an idle session kept maintain, migrate and
-- rotations waiting for as long as it liked. A row lock on this table
-- needs a privilege on it, which only the owner holds: its functions take
-- them (login_etl_lock_shared for the erase and rotate roles' shared
-- holds), in the transaction that needs them. The erase and rotate roles
-- can still hold theirs shared in a transaction they leave open, as any
-- role can hold the locks its own work takes (docs/insiders.md).
--   migration   -- the partition steps, the schema's migration (exclusive);
--                  a statement on the DEFAULT partition's ranges (shared)
--   key_version -- a rotation's switch (exclusive); forget, swap_default (shared)
CREATE TABLE IF NOT EXISTS user_logins_locks (
    name text PRIMARY KEY
);
INSERT INTO user_logins_locks (name) VALUES ('migration'), ('key_version') ON CONFLICT DO NOTHING;
REVOKE ALL ON user_logins_locks FROM PUBLIC;
