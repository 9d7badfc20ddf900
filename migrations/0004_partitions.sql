-- profile: all
-- The life of the partitioned user_logins: its granularity and the DEFAULT
-- partition (the functions `login-etl maintain` calls are in functions/).
-- Applied with 0001 to 0003, idempotent. See src/table/maintain.rs and
-- docs/runbooks/partitions.md.

-- How wide a partition is: chosen once, by `login-etl migrate
-- --partition-interval` (day unless given). One row.
CREATE TABLE IF NOT EXISTS user_logins_partitioning(
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    granularity varchar(8) NOT NULL CHECK (granularity IN ('day', 'week', 'month'))
);

-- Catches a row whose day has no partition yet, so no row is ever refused
-- for want of one. `login-etl maintain` reports its rows (metric
-- DefaultPartitionRows, alarmed) and moves them into their own partition.
-- Not once user_logins is the view over user_logins_rows (0028).
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins')) = 'p' THEN
        CREATE TABLE IF NOT EXISTS user_logins_default PARTITION OF user_logins DEFAULT;
    END IF;
END
$$;
