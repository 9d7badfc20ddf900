-- roles: ingest
-- When the masking key's version last changed (a rotation's switch or
-- its end): the function accepts a redrive claim signed with the previous
-- version only within the dead-letter queue's retention after it, so a
-- retired key (leaked, say) signs no back-dated row for long. Owner's
-- rights (the key state is the owner's); says nothing but the time.
CREATE OR REPLACE FUNCTION login_etl_key_changed_at() RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT (SELECT changed_at FROM user_logins_key_state)
$$;
