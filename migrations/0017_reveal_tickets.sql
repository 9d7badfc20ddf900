-- profile: full
-- A reveal in two transactions (src/privacy/reveal.rs): the first writes
-- the audit records and a ticket naming the entries (login_etl_reveal_request)
-- and commits; only a later transaction of the same database role, once the
-- first is committed, reads the entries with the ticket (login_etl_reveal),
-- once, within ten minutes. So nothing leaves the database before its audit
-- record is durable: a ROLLBACK, a SAVEPOINT rolled back or a dropped
-- connection takes the ticket with the records, and the entries were never
-- handed out. No role but the owner touches the table.
CREATE TABLE IF NOT EXISTS user_logins_reveal_tickets(
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    requested_by name NOT NULL DEFAULT session_user,
    requested_in xid8 NOT NULL DEFAULT pg_current_xact_id(),
    requested_at timestamptz NOT NULL DEFAULT now(),
    kinds        text[] NOT NULL,
    tokens       text[] NOT NULL,
    versions     smallint[] NOT NULL,
    used_at      timestamptz
);
-- The one-statement reveal, which handed the entries out in the caller's
-- own transaction: gone (its role runs the two above instead).
DROP FUNCTION IF EXISTS login_etl_reveal(text[], text[], varchar, text);
