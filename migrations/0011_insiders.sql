-- profile: all
-- What a stolen credential of one role can do, made smaller: the roles
-- registered by kind (the vault's last_seen guarded whoever writes it, and
-- the vault's retention by an index: 0012_vault_insiders.sql). Applied with
-- 0001 to 0010, idempotent.

-- The login-etl roles of this database, by what they do: `login-etl
-- grants` registers the role it prints for (run as the tables' owner), and
-- every `login-etl migrate` gives each registered role what its kind needs
-- of the functions and columns of the version it installs
-- (src/table/privileges.rs). The owner's alone: no grant on it.
CREATE TABLE IF NOT EXISTS user_logins_roles(
    role_name name PRIMARY KEY,
    kind      varchar(16) NOT NULL
              CHECK (kind IN ('ingest', 'reveal', 'erase', 'maintain', 'audit', 'rotate', 'upgrade'))
);

-- Roles granted before the registry, found once by a privilege only their
-- kind holds (granted to them directly, not through the owner).
DO $$
DECLARE
    v_owner oid := (SELECT relowner FROM pg_class WHERE oid = 'user_logins'::regclass);
BEGIN
    IF EXISTS (SELECT 1 FROM user_logins_roles) THEN
        RETURN;
    END IF;
    INSERT INTO user_logins_roles (role_name, kind)
    SELECT DISTINCT ON (r.rolname) r.rolname, k.kind
    FROM (
        SELECT a.grantee, CASE a.privilege_type WHEN 'INSERT' THEN 'ingest' ELSE 'erase' END AS kind, 1 AS rank
            FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
            WHERE c.oid = 'user_logins'::regclass AND a.privilege_type IN ('INSERT', 'DELETE')
        UNION ALL
        SELECT a.grantee, CASE WHEN t.attname = 'token' THEN 'reveal' ELSE 'audit' END, 2
            FROM pg_attribute t CROSS JOIN LATERAL aclexplode(t.attacl) a
            WHERE t.attrelid = to_regclass('user_logins_pii_audit')
              AND ((t.attname = 'token' AND a.privilege_type = 'INSERT')
                   OR (t.attname = 'caller_arn' AND a.privilege_type = 'SELECT'))
        UNION ALL
        SELECT a.grantee, CASE WHEN p.proname = 'login_etl_ensure_partition' THEN 'maintain' ELSE 'rotate' END, 2
            FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
            WHERE p.oid IN (to_regprocedure('login_etl_ensure_partition(date)'),
                            to_regprocedure('login_etl_switch_key(smallint,text,text,text)'),
                            to_regprocedure('login_etl_begin_rekey(smallint,text[],text[],text,text,text)'))
    ) k
    JOIN pg_roles r ON r.oid = k.grantee
    WHERE k.grantee <> 0 AND k.grantee <> v_owner
    ORDER BY r.rolname, k.rank;
END
$$;
