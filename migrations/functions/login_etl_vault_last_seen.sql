-- roles: none
-- profile: full
-- Guards the day a vault entry is kept to (user_logins_pii_vault.last_seen,
-- migrations/0012), whoever writes it, through the owner's functions or a
-- grant of an older version: never back (maintain's retention would purge
-- an entry rows still use: a role that may update it could move every
-- entry to 1900), never past today, UTC (a later day, 'infinity' say,
-- would keep the original past retention for ever; it becomes today).
CREATE OR REPLACE FUNCTION login_etl_vault_last_seen() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.last_seen < OLD.last_seen THEN
        RAISE EXCEPTION 'a vault entry''s last_seen only moves forward'
            USING ERRCODE = '42501';
    END IF;
    NEW.last_seen := least(NEW.last_seen, (now() AT TIME ZONE 'UTC')::date);
    RETURN NEW;
END
$$;
