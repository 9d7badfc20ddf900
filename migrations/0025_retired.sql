-- profile: all
-- What no supported binary calls any more (issue 65, item 4): the write
-- of the twelve columns of before `defects` (0014), which 0.1.0's binaries
-- called during a rollout; 0.2.0's call the contract's overload
-- (migrations/functions/login_etl_write.sql).
DROP FUNCTION IF EXISTS login_etl_write(
    bigint, integer, integer, varchar[], varchar[], varchar[], varchar[], varchar[], varchar[],
    integer[], varchar[], date[], timestamptz[], smallint[], jsonb[]);
