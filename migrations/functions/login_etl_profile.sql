-- roles: none
-- Kept for login-etl 0.2.0, whose binaries read the profile out of this
-- body (later ones read user_logins_schema, migrations/0024); goes in the
-- first release after 0.3.0. Nobody runs it. The masking-only profile's
-- says 'masking' (masking/login_etl_profile.sql).
CREATE OR REPLACE FUNCTION login_etl_profile() RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'full'::text $$;
