-- roles: maintain
-- Drops the tables `login_etl_drop_partition` detached (also those a run
-- that stopped between the two left): named like a partition (or like the
-- table an upgrade converted, user_logins_legacy), carrying its bounds
-- constraint, attached to nothing. Returns their names.
CREATE OR REPLACE FUNCTION login_etl_drop_detached()
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_name text;
BEGIN
    PERFORM login_etl_hold_lock('migration', true);
    FOR v_name IN SELECT c.relname::text FROM pg_class c
                  JOIN pg_constraint k ON k.conrelid = c.oid AND k.conname = c.relname || '_bounds'
                  WHERE c.relname ~ '^user_logins_(p[0-9]{8}|legacy)$' AND c.relkind = 'r' AND NOT c.relispartition
                    AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'user_logins'::regclass) LOOP
        EXECUTE format('DROP TABLE %I', v_name);
        RETURN NEXT v_name;
    END LOOP;
END
$$;
