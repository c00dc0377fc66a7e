-- Every gateway replica caches token rows; it LISTENs on `token_changes` and
-- drops a cached row when its id arrives. Only changes that affect what a
-- token may do notify: `last_used_at` bookkeeping does not.
CREATE FUNCTION notify_token_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('token_changes', OLD.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tokens_changed
    AFTER UPDATE ON tokens
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.scopes IS DISTINCT FROM NEW.scopes
          OR OLD.streams IS DISTINCT FROM NEW.streams
          OR OLD.subject IS DISTINCT FROM NEW.subject
          OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION notify_token_change();

CREATE TRIGGER tokens_deleted
    AFTER DELETE ON tokens
    FOR EACH ROW
    EXECUTE FUNCTION notify_token_change();
