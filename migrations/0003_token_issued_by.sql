-- Which token issued this one through the admin API. Revoking a token can
-- then revoke everything it handed out, and an admin token manages only the
-- tokens below it. NULL: made with the CLI (which uses no token), or issued
-- before this column existed.
--
-- The gateway never deletes rows. Deleting an issuing row by hand is refused
-- while rows it issued remain (the default NO ACTION), so the record of who
-- issued what is not lost without notice; rows deleted in one statement
-- together with everything they issued are fine.
ALTER TABLE tokens
    ADD COLUMN issued_by TEXT REFERENCES tokens (id);

-- Cascading revocation and subtree listings walk from a token to the ones it
-- issued, as does the foreign key check when a row is deleted.
CREATE INDEX tokens_issued_by ON tokens (issued_by);
