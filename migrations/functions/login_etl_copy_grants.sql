-- roles: none
-- Copies the table and column privileges of `src` to `dst` (the upgrade
-- of an unpartitioned user_logins: the roles granted on the old table keep
-- them on the new parent).
CREATE OR REPLACE FUNCTION login_etl_copy_grants(src regclass, dst regclass)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.privilege_type, a.grantee
             FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
             WHERE c.oid = src AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON %s TO %s', g.privilege_type, dst,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
    END LOOP;
    FOR g IN SELECT att.attname, a.privilege_type, a.grantee
             FROM pg_attribute att CROSS JOIN LATERAL aclexplode(att.attacl) a
             WHERE att.attrelid = src AND NOT att.attisdropped LOOP
        EXECUTE format('GRANT %s (%I) ON %s TO %s', g.privilege_type, g.attname, dst,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
    END LOOP;
END
$$;
