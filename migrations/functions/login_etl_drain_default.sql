-- roles: maintain
-- Moves pages [from_page, from_page + pages) of the swapped-out DEFAULT
-- partition back through user_logins (each row to its partition; a row
-- delivered again meanwhile stays single). Returns the rows taken and the
-- next page; past the last page it drops the emptied table, ends the
-- drain, and returns no next page.
CREATE OR REPLACE FUNCTION login_etl_drain_default(from_page bigint, pages integer,
    OUT moved bigint, OUT next_page bigint)
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_drain regclass;
    v_cols text;
    v_pages bigint;
BEGIN
    PERFORM login_etl_hold_lock('migration', true);
    moved := 0;
    v_drain := login_etl_relation('user_logins_drain');
    IF v_drain IS NULL THEN
        RETURN;
    END IF;
    v_pages := pg_relation_size(v_drain) / current_setting('block_size')::int8;
    IF from_page >= v_pages THEN
        EXECUTE format('DROP TABLE %s', v_drain);
        UPDATE user_logins_default_drains SET finished_at = now() WHERE finished_at IS NULL;
        RETURN;
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_cols
        FROM pg_attribute a WHERE a.attrelid = 'user_logins_rows'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
    EXECUTE format('WITH m AS (DELETE FROM %s WHERE ctid >= %L::tid AND ctid < %L::tid RETURNING %s), '
                   'ins AS (INSERT INTO user_logins_rows (%s) SELECT %s FROM m ON CONFLICT DO NOTHING) '
                   'SELECT count(*) FROM m',
                   v_drain, format('(%s,0)', from_page), format('(%s,0)', from_page + pages), v_cols, v_cols, v_cols)
        INTO moved;
    next_page := from_page + pages;
END
$$;
