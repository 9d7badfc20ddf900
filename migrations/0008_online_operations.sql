-- profile: all
-- What lets rotate-key, maintain and forget run beside live ingest without
-- holding a write up (the soak, tests/soak/, found each of these). Applied
-- with 0001 to 0007, idempotent.

-- The DEFAULT partition, when it holds more than maintain may move under
-- its lock (a day of rows, after days of failed maintenance), is swapped
-- out instead of emptied: in one moment of catalog work (its lock waited
-- for at most 100 ms, like retention's detach) it is detached and renamed
-- user_logins_drain, an empty DEFAULT partition takes its place and the
-- days writes go to now get their partitions. Writes go on at once;
-- maintain then makes the partitions of the drained days (the new DEFAULT
-- holds next to nothing: no long scan, no write waiting). The drained
-- rows then go back through user_logins in short chunks
-- (login_etl_drain_default), ON CONFLICT DO NOTHING keeping a message that
-- was delivered again meanwhile once. Until then they are out of sight:
-- forget exits 75 and says to run it again (its generation check,
-- login_etl_drain_state),
-- and rotate-key's switch waits. Refused while a re-key is under way
-- (LE007): its walk would not see them.
CREATE TABLE IF NOT EXISTS user_logins_default_drains(
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    rows_estimate bigint,
    finished_at   timestamptz
);
