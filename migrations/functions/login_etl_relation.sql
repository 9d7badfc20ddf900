-- roles: none
-- The table, partition or index `name` in user_logins's own schema, NULL
-- when there is none. The owner's functions look up a name that may be
-- missing (user_logins_drain between drains, an index not built yet, a
-- partition retention dropped) through this, never through the search
-- path: there pg_temp comes last but still comes, and a caller's
-- temporary table of that name would stand in for the missing one.
CREATE OR REPLACE FUNCTION login_etl_relation(name text) RETURNS regclass
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass FROM pg_class c
    WHERE c.relname = name
      AND c.relnamespace = (SELECT u.relnamespace FROM pg_class u WHERE u.oid = 'user_logins'::regclass)
$$;
