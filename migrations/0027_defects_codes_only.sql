-- profile: all
-- `defects` holds codes only (issue 76, finding 3), held by the database
-- as well as by the function: each element is `<name>.<problem>`, the
-- name a contract field's or a declared extra field's (letters, digits
-- and `_`, no run of four digits: src/contract/field.rs, is_identifier),
-- the problem one the function writes (src/contract/defect.rs), at most
-- 32 codes and 2,048 bytes in all. An address, an email, an SSN or a
-- sentence is refused (23514), whoever writes the row.
--
-- Checked only where `defects` is not NULL (a clean row pays nothing):
-- one regex over the codes joined, with unbounded repetition only (the
-- bounded kind is what made the tokens' check expensive, 0020). NOT
-- VALID: rows written before are not scanned; new partitions copy it
-- (login_etl_ensure_partition, INCLUDING CONSTRAINTS). Guarded, so that
-- a migrate of a current table takes no lock on it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins'::regclass
                   AND conname = 'user_logins_defects_codes_only') THEN
        ALTER TABLE user_logins ADD CONSTRAINT user_logins_defects_codes_only
            CHECK (defects IS NULL
                   OR (cardinality(defects) BETWEEN 1 AND 32
                       AND array_position(defects, NULL) IS NULL
                       AND octet_length(array_to_string(defects, ' ')) <= 2048
                       AND array_to_string(defects, ' ') ~ ('^([A-Za-z_][A-Za-z0-9_]*\.(missing|wrong_type|empty|too_long'
                           '|nul|duplicate|integer|port|zone|list|unparseable|prefix|fourth_part|suffix|unparsed'
                           '|out_of_range|rebuilt_from_copy|duplicate_field|nul_character|invalid_value|not_scalar)'
                           '( |$))+$')
                       AND array_to_string(defects, ' ') !~ '[0-9][0-9][0-9][0-9]')) NOT VALID;
    END IF;
END
$$;
