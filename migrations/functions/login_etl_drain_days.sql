-- roles: maintain
-- What the swapped-out DEFAULT partition holds, by day (their partitions
-- are made before its rows move back).
-- One core: a parallel scan of a day's rows took both cores of the bench
-- machine from the writes beside it (benches/stalls.rs).
CREATE OR REPLACE FUNCTION login_etl_drain_days()
RETURNS TABLE(day date, row_count bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET max_parallel_workers_per_gather = 0 AS $$
BEGIN
    IF login_etl_relation('user_logins_drain') IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format('SELECT (sent_at AT TIME ZONE ''UTC'')::date, count(*) FROM %s GROUP BY 1 ORDER BY 1',
                               login_etl_relation('user_logins_drain'));
END
$$;
