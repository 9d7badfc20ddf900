-- roles: none
-- Kept for login-etl 0.2.0, whose binaries read the schema's version out
-- of this body (later ones read user_logins_schema, migrations/0024); goes
-- in the first release after 0.3.0. Nobody runs it.
CREATE OR REPLACE FUNCTION login_etl_schema_version() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT {{schema_version}} $$;
