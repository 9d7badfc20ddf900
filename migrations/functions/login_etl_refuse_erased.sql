-- roles: ingest
-- profile: full
-- The write checks of function binaries from before login_etl_check_write
-- (no release calls them). Kept because 0.2.0's schema guard takes the
-- two-argument one as the sign that erasure is installed: they go, with
-- login_etl_refuse_erased_at and login_etl_erased_below, in the first
-- release after 0.3.0. Each is refused with a code those binaries know
-- (LE001: they reload the erasure list, try again a few times, then fail
-- the batch as retryable, never to the DLQ).
--
-- One argument: a function from before key versions. It knows one key
-- only, so it may write only while the database is at version 1.
CREATE OR REPLACE FUNCTION login_etl_refuse_erased(known bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF coalesce((SELECT s.version FROM login_etl_key_state() s), 1) <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = 'the masking key was rotated (login-etl rotate-key) and this function predates key versions: deploy the current version';
    END IF;
    PERFORM login_etl_refuse_erased(known, 1);
END
$$;

-- Two arguments: a function from before the erasure list was re-keyed in
-- chunks; it checks its own key version only.
CREATE OR REPLACE FUNCTION login_etl_refuse_erased(known bigint, key_version integer) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM login_etl_refuse_erased(known, key_version, key_version);
END
$$;

-- Three arguments: the check login_etl_check_write replaced (the same
-- codes and messages). LE001 also while the erasure list still holds keys
-- older than `checked_from`, the oldest version the writer looked its
-- users up at: a writer that checks its own version only (the
-- two-argument form) would miss the users rotate-key has not moved yet,
-- so it is refused until the list is moved, seconds after the switch.
CREATE OR REPLACE FUNCTION login_etl_refuse_erased(known bigint, key_version integer, checked_from integer)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_from smallint := (SELECT s.rekey_from FROM login_etl_key_state() s);
BEGIN
    PERFORM login_etl_refuse_erased_at(known, key_version);
    IF v_from IS NOT NULL AND checked_from > v_from
       AND login_etl_erased_below(checked_from::smallint) THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = format('rotate-key is moving the erasure list from key version %s and this write checked users at version %s only: reload the list (a function from before this check: deploy the current version)', v_from, checked_from);
    END IF;
END
$$;
