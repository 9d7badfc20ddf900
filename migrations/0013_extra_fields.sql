-- profile: all
-- Declared extra fields (EXTRA_FIELDS): the values of fields outside the
-- contract that an operator declared free of PII, as one JSON object per
-- row (src/contract/policy.rs). NULL when none is present, and on every
-- row written before. A nullable column without a default: a change of
-- the catalog only, no rewrite of any partition. Guarded, so that a
-- migrate of a current table takes no lock on it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = to_regclass('user_logins') AND attname = 'extra'
                     AND NOT attisdropped) THEN
        ALTER TABLE user_logins ADD COLUMN extra jsonb;
    END IF;
END
$$;
