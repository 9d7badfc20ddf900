-- profile: full
-- What each rotation changed in the erasure list and the audit trail, the
-- old value beside the new (issue 63, item 2). The rotate role re-keys
-- them during a rotation the owner armed; a stolen rotate credential could
-- then write values that are no one's key in their place (an erased user's
-- next login stored again). The re-key functions append here in the
-- statement that changes the value, so what was there stays, for the owner
-- to compare and put back. Append-only (its trigger, as the audit
-- trail's); no role of login-etl's reads or writes it but through those
-- functions: the owner reads it.
CREATE TABLE IF NOT EXISTS user_logins_rekeyed (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    db_role text NOT NULL DEFAULT session_user,
    source text NOT NULL CHECK (source IN ('erased', 'audit')),
    source_id bigint NOT NULL,
    to_version smallint NOT NULL,
    old_user_key text,
    new_user_key text,
    old_token text,
    new_token text
);
REVOKE ALL ON user_logins_rekeyed FROM PUBLIC;
