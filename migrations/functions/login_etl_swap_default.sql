-- roles: maintain
-- Swaps the DEFAULT partition out when it holds more than maintain may
-- move under its lock (migrations/0008, user_logins_default_drains): in
-- one moment of catalog work it is detached and renamed user_logins_drain,
-- an empty DEFAULT partition takes its place, and the days writes go to
-- now (`live_days`) get their partitions. False when a drain is under way
-- already; refused (LE007) while a re-key is under way.
CREATE OR REPLACE FUNCTION login_etl_swap_default(live_days date[])
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_rows bigint;
    v_day date;
BEGIN
    PERFORM login_etl_hold_lock('migration', true);
    -- The key switch's lock (user_logins_locks 'key_version', taken exclusively by
    -- login_etl_switch_key): without it a switch committing beside this
    -- swap saw no drain and the swap no re-key, and the walk missed the
    -- drained rows. Taken, the next statement sees a switch committed.
    PERFORM login_etl_hold_lock('key_version', false);
    IF login_etl_relation('user_logins_drain') IS NOT NULL THEN
        RETURN false;
    END IF;
    IF (SELECT rekey_from FROM user_logins_key_state) IS NOT NULL THEN
        RAISE EXCEPTION 'a masking-key re-key (login-etl rotate-key) is under way: the DEFAULT partition is emptied after it'
            USING ERRCODE = 'LE007';
    END IF;
    -- Nothing to move: no swap (repeated swaps of an empty partition would
    -- keep forget and rotate-key waiting for a drain with nothing in it).
    IF NOT EXISTS (SELECT 1 FROM user_logins_default LIMIT 1) THEN
        RETURN false;
    END IF;
    SELECT greatest(c.reltuples, 0)::bigint INTO v_rows FROM pg_class c WHERE c.oid = 'user_logins_default'::regclass;
    ALTER TABLE user_logins_rows DETACH PARTITION user_logins_default;
    ALTER TABLE user_logins_default RENAME TO user_logins_drain;
    -- In user_logins's schema, named: pg_catalog comes first in this
    -- function's search path, and an unqualified CREATE would aim there.
    EXECUTE format('CREATE TABLE %s.user_logins_default PARTITION OF user_logins_rows DEFAULT',
                   (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'user_logins'::regclass));
    INSERT INTO user_logins_default_drains (rows_estimate) VALUES (v_rows);
    -- The days writes go to now (today, yesterday's late messages) get
    -- their partition in the same moment, while the new DEFAULT partition
    -- is empty: no later attach then waits for writes going there.
    FOREACH v_day IN ARRAY live_days LOOP
        PERFORM login_etl_ensure_partition(v_day);
    END LOOP;
    RETURN true;
END
$$;
