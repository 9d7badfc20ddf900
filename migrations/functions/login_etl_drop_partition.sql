-- roles: maintain
-- Detaches `part` if every row it can hold is older than `cutoff` (its
-- upper bound is at or before it); NULL when it did nothing, else the
-- partition's estimated rows. `login_etl_drop_detached` drops it, in a
-- transaction of its own, so that this one holds its lock for the catalog
-- change only: no scan, no file removal, whatever the partition's size.
-- DETACH ... CONCURRENTLY is refused while a DEFAULT partition exists, so
-- this is a plain DETACH: its ACCESS EXCLUSIVE lock on user_logins is
-- waited for at most lock_timeout (the caller retries). A cutoff inside
-- the retention the tables' owner recorded is refused
-- (login_etl_check_cutoff): a stolen maintain credential drops nothing
-- the deployment keeps.
CREATE OR REPLACE FUNCTION login_etl_drop_partition(part text, cutoff date)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_rows bigint;
BEGIN
    PERFORM login_etl_check_cutoff(cutoff);
    PERFORM login_etl_hold_lock('migration', true);
    SELECT p.rows_estimate INTO v_rows FROM login_etl_partitions() p
        WHERE p.name = part AND NOT p.is_default AND p.hi <= cutoff;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    EXECUTE format('ALTER TABLE user_logins_rows DETACH PARTITION %I', part);
    RETURN v_rows;
END
$$;
