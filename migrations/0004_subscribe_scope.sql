-- The `subscribe` scope: managing and claiming subscriptions under the
-- reserved `__ds/subscriptions` prefix (PROTOCOL §6–7). The scope list is a
-- CHECK constraint (0001, named by Postgres after its column), so it is
-- replaced rather than edited. Every existing row satisfies the wider check.
ALTER TABLE tokens DROP CONSTRAINT tokens_scopes_check;

ALTER TABLE tokens
    ADD CONSTRAINT tokens_scopes_check
    CHECK (scopes <@ ARRAY['read', 'write', 'delete', 'admin', 'subscribe']);
