-- roles: all
-- The partitions of user_logins with their bounds (lo NULL: MINVALUE, the
-- table an upgrade converted), from the catalog.
-- rows_estimate is pg_class.reltuples (as of the last ANALYZE), 0 if unknown.
CREATE OR REPLACE FUNCTION login_etl_partitions()
RETURNS TABLE(name text, lo date, hi date, is_default boolean, rows_estimate bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           (substring(b FROM 'FROM \(''([^'']+)''\)')::timestamptz AT TIME ZONE 'UTC')::date,
           (substring(b FROM 'TO \(''([^'']+)''\)')::timestamptz AT TIME ZONE 'UTC')::date,
           b = 'DEFAULT',
           greatest(c.reltuples, 0)::bigint
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) AS b
    WHERE i.inhparent = 'user_logins_rows'::regclass
    ORDER BY 2 NULLS FIRST, 1
$$;
