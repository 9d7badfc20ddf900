-- roles: rotate
-- profile: full
-- The records rotate-key still has to re-key to `to_version`, in id order
-- after `after_id`: their token, user key and version (of their time, when
-- they name none: 1 + the re-keys begun before them). Only during a
-- re-key to `to_version` (login_etl_rekey_under_way).
CREATE OR REPLACE FUNCTION login_etl_audit_to_rekey(to_version smallint, after_id bigint, max_rows integer)
RETURNS TABLE(id bigint, token text, user_key text, key_version smallint)
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
BEGIN
    PERFORM login_etl_rekey_under_way((to_version - 1)::smallint);
    RETURN QUERY
    WITH begun AS (SELECT coalesce(array_agg(b.id), '{}') AS ids
                   FROM user_logins_pii_audit b WHERE b.action = 'rekey_begun')
    SELECT a.id, a.token::text, a.user_key::text,
           coalesce(a.key_version, (1 + (SELECT count(*) FROM unnest((SELECT ids FROM begun)) i WHERE i < a.id)))::smallint
    FROM user_logins_pii_audit a
    WHERE a.id > after_id AND (a.token IS NOT NULL OR a.user_key IS NOT NULL)
      AND (a.key_version IS NULL OR a.key_version < to_version)
    ORDER BY a.id LIMIT max_rows;
END
$$;
