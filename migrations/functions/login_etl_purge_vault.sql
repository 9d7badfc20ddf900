-- roles: maintain
-- profile: full
-- `login-etl maintain`'s retention of the vault: deletes at most
-- `max_entries` of the entries no row within retention has used
-- (`last_seen` before `cutoff`), found through the index on last_seen
-- (user_logins_pii_vault_last_seen), so a run with nothing newly past
-- retention reads a few index pages, whatever the vault's size. Returns
-- how many; fewer than `max_entries` when none is left (or one was locked:
-- it is skipped, never waited for, so the purge is in no lock cycle; an
-- entry locked by a write is being moved forward). In chunks, each in a
-- transaction of its own: never a long delete under a lock.
CREATE OR REPLACE FUNCTION login_etl_purge_vault(cutoff date, max_entries integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' SET enable_seqscan = off AS $$
DECLARE
    v_purged bigint;
BEGIN
    PERFORM login_etl_check_cutoff(cutoff);
    DELETE FROM user_logins_pii_vault v
        WHERE v.ctid = ANY (ARRAY(SELECT e.ctid FROM user_logins_pii_vault e WHERE e.last_seen < cutoff
                                  LIMIT max_entries FOR UPDATE SKIP LOCKED))
          AND v.last_seen < cutoff;
    GET DIAGNOSTICS v_purged = ROW_COUNT;
    RETURN v_purged;
END
$$;

-- The same by a walk of pages [from_page, from_page + pages) of the vault
-- (maintain binaries from before the index, and a vault whose index is
-- not built yet): returns the entries deleted and the next page; past the
-- last page, no next page. Every run reads the whole vault, a chunk of
-- pages at a time.
CREATE OR REPLACE FUNCTION login_etl_purge_vault(cutoff date, from_page bigint, pages integer,
    OUT purged bigint, OUT next_page bigint)
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
BEGIN
    PERFORM login_etl_check_cutoff(cutoff);
    purged := 0;
    IF from_page >= pg_relation_size('user_logins_pii_vault'::regclass) / current_setting('block_size')::int8 THEN
        RETURN;
    END IF;
    DELETE FROM user_logins_pii_vault
        WHERE ctid >= format('(%s,0)', from_page)::tid AND ctid < format('(%s,0)', from_page + pages)::tid
          AND last_seen < cutoff;
    GET DIAGNOSTICS purged = ROW_COUNT;
    next_page := from_page + pages;
END
$$;
