-- roles: maintain
-- What waits in the DEFAULT partition, by day (small: rows land there only
-- while their partition is missing; when it is not, one core, so that the
-- writes beside the scan keep the other).
CREATE OR REPLACE FUNCTION login_etl_default_days()
RETURNS TABLE(day date, row_count bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET max_parallel_workers_per_gather = 0 AS $$
    SELECT (sent_at AT TIME ZONE 'UTC')::date, count(*) FROM user_logins_default GROUP BY 1 ORDER BY 1
$$;
