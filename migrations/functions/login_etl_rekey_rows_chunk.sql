-- roles: rotate
-- profile: full
-- rotate-key's chunk of rows (src/privacy/rekey/rows.rs): the rows among
-- `tids` of the partition `rel`, within its pages [lo_page, hi_page) and
-- the days of the caller's segment (`days_null`: create_date IS NULL;
-- else from `lo_day` to before `hi_day`, each open when NULL), still at
-- `from_version`, get the tokens and user tags the caller computed
-- (migrations/0026_user_tag.sql) and the next version.
-- Returns the rows moved, also added to the re-key's count. Only during a
-- re-key from `from_version` (login_etl_rekey_under_way): the rotate role
-- holds no UPDATE on user_logins, so outside a rotation it cannot re-token
-- a row.
--
-- The days are written into the statement, so that the planner prunes it
-- to the one partition; no nested loop, as in login_etl_rekey_vault_chunk.
CREATE OR REPLACE FUNCTION login_etl_rekey_rows_chunk(rel text, lo_page bigint, hi_page bigint,
    days_null boolean, lo_day date, hi_day date,
    tids tid[], ips varchar[], devices varchar[], tags bigint[], from_version smallint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET enable_nestloop = off AS $$
DECLARE
    v_days text;
    v_moved bigint;
BEGIN
    PERFORM login_etl_rekey_under_way(from_version);
    -- By UTC days of sent_at, the narrow row's partition key (every row
    -- has one: no row is without a day).
    v_days := CASE WHEN days_null THEN 'false'
                   ELSE concat_ws(' AND ', 'true',
                                  CASE WHEN lo_day IS NOT NULL THEN format('u.sent_at >= %L::timestamptz', lo_day::timestamp AT TIME ZONE 'UTC') END,
                                  CASE WHEN hi_day IS NOT NULL THEN format('u.sent_at < %L::timestamptz', hi_day::timestamp AT TIME ZONE 'UTC') END) END;
    EXECUTE format('UPDATE user_logins_rows u SET masked_ip = decode(m.ip, ''hex''), masked_device_id = decode(m.dev, ''hex''), user_tag = m.tag, '
                   'key_version = $4 + 1 FROM unnest($1, $2, $3, $8) AS m(t, ip, dev, tag) '
                   'WHERE u.ctid = m.t AND u.ctid >= $5 AND u.ctid < $6 AND u.tableoid = login_etl_relation($7) '
                   'AND u.key_version = $4 AND %s', v_days)
        USING tids, ips, devices, from_version, format('(%s,0)', lo_page)::tid, format('(%s,0)', hi_page)::tid, rel,
              tags;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    IF v_moved > 0 THEN
        UPDATE user_logins_key_state SET rekey_rows = rekey_rows + v_moved;
    END IF;
    RETURN v_moved;
END
$$;

-- 0.2.0's rotate-key, which computes no tags: the rows it moves lose
-- theirs (a forget deletes a row without a tag by user id alone, as
-- before tags), never keep one of the previous version.
CREATE OR REPLACE FUNCTION login_etl_rekey_rows_chunk(rel text, lo_page bigint, hi_page bigint,
    days_null boolean, lo_day date, hi_day date,
    tids tid[], ips varchar[], devices varchar[], from_version smallint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET enable_nestloop = off AS $$
DECLARE
    v_days text;
    v_moved bigint;
BEGIN
    PERFORM login_etl_rekey_under_way(from_version);
    -- By UTC days of sent_at, the narrow row's partition key (every row
    -- has one: no row is without a day).
    v_days := CASE WHEN days_null THEN 'false'
                   ELSE concat_ws(' AND ', 'true',
                                  CASE WHEN lo_day IS NOT NULL THEN format('u.sent_at >= %L::timestamptz', lo_day::timestamp AT TIME ZONE 'UTC') END,
                                  CASE WHEN hi_day IS NOT NULL THEN format('u.sent_at < %L::timestamptz', hi_day::timestamp AT TIME ZONE 'UTC') END) END;
    EXECUTE format('UPDATE user_logins_rows u SET masked_ip = decode(m.ip, ''hex''), masked_device_id = decode(m.dev, ''hex''), user_tag = NULL, key_version = $4 + 1 '
                   'FROM unnest($1, $2, $3) AS m(t, ip, dev) '
                   'WHERE u.ctid = m.t AND u.ctid >= $5 AND u.ctid < $6 AND u.tableoid = login_etl_relation($7) '
                   'AND u.key_version = $4 AND %s', v_days)
        USING tids, ips, devices, from_version, format('(%s,0)', lo_page)::tid, format('(%s,0)', hi_page)::tid, rel;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    IF v_moved > 0 THEN
        UPDATE user_logins_key_state SET rekey_rows = rekey_rows + v_moved;
    END IF;
    RETURN v_moved;
END
$$;
