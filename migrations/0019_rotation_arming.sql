-- profile: full
-- A rotation only the tables' owner can start: the owner arms it (`login-etl
-- rotate-key --arm`, run as the migrate role with both keys' secrets),
-- recording the check values of the new version's keys; the rotate role's
-- switch is refused unless an arming for that version with the same check
-- values exists, and consumes it (login_etl_armed). A stolen rotate
-- credential alone starts nothing. No role but the owner touches it.
CREATE TABLE IF NOT EXISTS user_logins_rotation_arming(
    to_version    smallint PRIMARY KEY CHECK (to_version >= 2),
    masking_check varchar(64) COLLATE "C" NOT NULL,
    erasure_check varchar(64) COLLATE "C" NOT NULL,
    armed_by      name NOT NULL DEFAULT session_user,
    armed_at      timestamptz NOT NULL DEFAULT now()
);
