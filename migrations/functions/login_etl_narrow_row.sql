-- roles: ingest
-- A row in the columns user_logins always had, as the narrow row stores
-- it (migrations/0028): the ids as uuid where they are one in canonical
-- lowercase form, their text beside them where not (a message id's uuid
-- then the first 16 bytes of the SHA-256 of its text, as
-- src/contract/columns.rs computes it), the tokens' 32 bytes, the
-- version's text only where app_version does not render back to it, and
-- a row without sent_at (the upstream table's) at its day's midnight.
-- What 0.2.0's write (login_etl_write's older overload) stores; a tool
-- that inserts today's columns as the owner can do the same
-- (`INSERT INTO user_logins_rows SELECT * FROM login_etl_narrow_row(...)`).
-- Parameters by number: the output columns share their names.
CREATE OR REPLACE FUNCTION login_etl_narrow_row(
    message_id varchar, user_id varchar, device_type varchar, masked_ip varchar,
    masked_device_id varchar, locale varchar, app_version integer, app_version_text varchar,
    create_date date, sent_at timestamptz, key_version smallint, user_tag bigint, defects text[],
    extra jsonb)
RETURNS TABLE(sent_at timestamptz, user_tag bigint, app_version integer, key_version smallint,
    message_id uuid, user_id uuid, masked_ip bytea, masked_device_id bytea, device_type varchar,
    locale varchar, app_version_text varchar, user_id_text varchar, message_id_text varchar,
    defects text[], extra jsonb)
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce($10, $9::timestamp AT TIME ZONE 'UTC'), $12, $7, coalesce($11, 1::smallint),
        CASE WHEN c.message THEN $1::uuid
             WHEN $1 IS NOT NULL THEN encode(substring(sha256(convert_to($1, 'UTF8')) FROM 1 FOR 16), 'hex')::uuid END,
        CASE WHEN c.usr THEN $2::uuid END,
        decode($4, 'hex'), decode($5, 'hex'), $3, $6,
        CASE WHEN $1 IS NULL OR $8 IS DISTINCT FROM $7 / 1000000 || '.' || $7 / 1000 % 1000 || '.' || $7 % 1000
             THEN $8 END,
        CASE WHEN NOT c.usr THEN $2 END,
        CASE WHEN NOT c.message THEN $1 END,
        $13, $14
    FROM (SELECT
        coalesce(translate($1, '0123456789abcdef', '0000000000000000') = '00000000-0000-0000-0000-000000000000', false) AS message,
        coalesce(translate($2, '0123456789abcdef', '0000000000000000') = '00000000-0000-0000-0000-000000000000', false) AS usr) AS c
$$;
