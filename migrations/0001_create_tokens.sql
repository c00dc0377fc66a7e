-- Bearer tokens issued by the auth gateway. The JWT itself is never stored:
-- a row holds what the token may do, and whether it still may.
CREATE TABLE tokens (
    -- The JWT's `jti` claim.
    id           TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
    -- The JWT's `sub` claim, forwarded upstream as X-Auth-Subject.
    subject      TEXT NOT NULL CHECK (subject <> ''),
    -- Any of read, write, delete, admin.
    scopes       TEXT[] NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'delete', 'admin']),
    -- Stream path patterns ('*' one segment, '**' any number).
    streams      TEXT[] NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

-- `token list` shows the newest first.
CREATE INDEX tokens_created_at ON tokens (created_at DESC);
