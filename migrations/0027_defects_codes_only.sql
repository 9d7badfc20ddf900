-- profile: all
-- `defects` holds codes only (issue 76, finding 3), held by the database
-- as well as by the function: each element is `<name>.<problem>`, the
-- name a field's (a letter or `_`, then letters, digits and `_`:
-- src/contract/field.rs, is_identifier), the problem a lowercase word
-- (src/contract/defect.rs), at most 32 codes and 2,048 bytes in all. An
-- address, an email, an SSN, a sentence or a code with a value beside it
-- is refused (23514), whoever writes the row.
--
-- Checked only where `defects` is not NULL (a clean row pays nothing),
-- by one regex over the codes joined, without captures, alternatives or
-- bounded repetition: COPY of 200,000 rows with defects took 2.0 s with
-- the problems listed as alternatives inside non-capturing groups, 3.7 s
-- with capturing ones, 0.20 s with this form and 0.10 s with no check
-- (docs/performance.md). NOT VALID: rows written before are not scanned;
-- new partitions copy it (login_etl_ensure_partition, INCLUDING
-- CONSTRAINTS). Guarded, so that a migrate of a current table takes no
-- lock on it.
DO $$
BEGIN
    -- Not once user_logins is the view over user_logins_rows (0028).
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins')) = 'p' THEN
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins'::regclass
                       AND conname = 'user_logins_defects_codes_only') THEN
            ALTER TABLE user_logins ADD CONSTRAINT user_logins_defects_codes_only
                CHECK (defects IS NULL
                       OR (cardinality(defects) BETWEEN 1 AND 32
                           AND array_position(defects, NULL) IS NULL
                           AND octet_length(array_to_string(defects, ',')) <= 2048
                           AND array_to_string(defects, ',')
                               ~ '^[A-Za-z_][A-Za-z0-9_]*\.[a-z_]+(?:,[A-Za-z_][A-Za-z0-9_]*\.[a-z_]+)*$')) NOT VALID;
        END IF;
    END IF;
END
$$;
