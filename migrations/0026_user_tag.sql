-- profile: all
-- Each row's user tag (issue 76, finding 5): the first 8 bytes of the
-- SHA-256 of its user's key (the erasure list's keyed hash of user_id, at
-- the row's key version), as a bigint, written by a full-profile function
-- holding the erasure key; NULL in a masking-only database, under user
-- keys derived from the masking key, and on every row written before.
-- login_etl_forget_rows deletes a user id's rows only under the listed
-- key whose tag they carry, so the erase role cannot delete one user's
-- rows under another's erasure: it holds no key and cannot read the tag.
-- A nullable column without a default: a change of the catalog only, no
-- rewrite of any partition. Guarded, so that a migrate of a current table
-- takes no lock on it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = to_regclass('user_logins') AND attname = 'user_tag'
                     AND NOT attisdropped) THEN
        ALTER TABLE user_logins ADD COLUMN user_tag bigint;
    END IF;
END
$$;
