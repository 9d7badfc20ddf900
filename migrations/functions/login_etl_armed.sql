-- roles: none
-- profile: full
-- Whether the owner armed the rotation to `to_version` with these check
-- values (user_logins_rotation_arming): the switches (login_etl_switch_key,
-- login_etl_begin_rekey) call it under their lock, and it consumes the
-- arming. LE013: not armed, or armed for other keys; the fix is the
-- owner's (`login-etl rotate-key --arm`).
CREATE OR REPLACE FUNCTION login_etl_armed(to_version smallint, masking_check text, erasure_check text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    DELETE FROM user_logins_rotation_arming a
        WHERE a.to_version = login_etl_armed.to_version
          AND a.masking_check = login_etl_armed.masking_check
          AND a.erasure_check = login_etl_armed.erasure_check;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LE013',
            MESSAGE = format('the tables'' owner has not armed a rotation to key version %s with these keys: as the migrate role, with both keys'' secrets, run login-etl rotate-key --arm, then rotate-key again (docs/runbooks/leaked-key.md)', to_version);
    END IF;
END
$$;
