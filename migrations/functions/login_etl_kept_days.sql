-- roles: maintain
-- The deployment's retention as the tables' owner recorded it
-- (user_logins_retention): days kept, today included; NULL keeps every
-- login. maintain reads it before it takes a cutoff, so a RETENTION_DAYS
-- that disagrees is reported and the longer of the two applied, instead
-- of a cutoff login_etl_check_cutoff refuses every hour. Owner's rights
-- (the record is the owner's); says nothing but the number.
CREATE OR REPLACE FUNCTION login_etl_kept_days() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT (SELECT r.keep_days FROM user_logins_retention r)
$$;
