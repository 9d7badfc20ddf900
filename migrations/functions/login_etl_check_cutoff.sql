-- roles: none
-- The retention floor (user_logins_retention, the owner's record of the
-- deployment's retention), checked by every function of the maintain role
-- that deletes rows or vault entries: a cutoff after the first day kept
-- (today, minus keep_days - 1) is refused, and so is any cutoff where the
-- deployment keeps everything. LE010: what the maintain role asked for is
-- more than the owner allowed; the fix is the owner's.
CREATE OR REPLACE FUNCTION login_etl_check_cutoff(cutoff date)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
DECLARE
    v_keep integer := (SELECT r.keep_days FROM user_logins_retention r);
    v_first date;
BEGIN
    IF v_keep IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'LE010',
            MESSAGE = format('the deployment keeps every login (its recorded retention), so nothing before %s is deleted: the tables'' owner records the retention with RETENTION_DAYS=<days> login-etl migrate (docs/runbooks/partitions.md)', cutoff);
    END IF;
    v_first := (now() AT TIME ZONE 'UTC')::date - (v_keep - 1);
    IF cutoff > v_first THEN
        RAISE EXCEPTION USING ERRCODE = 'LE010',
            MESSAGE = format('a cutoff of %s would delete logins the deployment keeps (%s days, from %s): RETENTION_DAYS is shorter than the retention the tables'' owner recorded; raise RETENTION_DAYS, or have the owner record the shorter one with RETENTION_DAYS=<days> login-etl migrate (docs/runbooks/partitions.md)', cutoff, v_keep, v_first);
    END IF;
END
$$;
