-- roles: maintain
-- The DEFAULT partition's rows, counted up to `cap + 1` only.
-- (PL/pgSQL: its table is looked up when it runs, so it can be made before
-- an upgraded table has its DEFAULT partition, `migrate --prepare`.)
CREATE OR REPLACE FUNCTION login_etl_default_size(cap bigint) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
BEGIN
    RETURN (SELECT count(*) FROM (SELECT 1 FROM user_logins_default LIMIT cap + 1) d);
END
$$;
