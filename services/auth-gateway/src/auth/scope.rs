//! Token scopes and which one each request needs.

use std::fmt;
use std::str::FromStr;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `GET`, `HEAD`: catch-up, long-poll and SSE reads, metadata.
    Read,
    /// `PUT` (create, fork) and `POST` (append, close).
    Write,
    /// `DELETE`.
    Delete,
    /// Token management under `/admin/tokens`.
    Admin,
    /// Subscriptions under the reserved `__ds/subscriptions` prefix
    /// (PROTOCOL §6–7): create, read, change, delete and claim them. Only
    /// together with `read` on every stream a subscription covers (and
    /// `write` on its wake stream); see `http::control`.
    Subscribe,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Write,
        Scope::Delete,
        Scope::Admin,
        Scope::Subscribe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Delete => "delete",
            Scope::Admin => "admin",
            Scope::Subscribe => "subscribe",
        }
    }

    /// The scope a stream request with `method` needs; `None` for methods
    /// that never reach a stream (CORS preflight) or are not allowed.
    pub fn for_stream_method(method: &str) -> Option<Scope> {
        match method {
            "GET" | "HEAD" => Some(Scope::Read),
            "PUT" | "POST" => Some(Scope::Write),
            "DELETE" => Some(Scope::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: expected read, write, delete, admin or subscribe")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_scopes() {
        assert_eq!(Scope::for_stream_method("GET"), Some(Scope::Read));
        assert_eq!(Scope::for_stream_method("HEAD"), Some(Scope::Read));
        assert_eq!(Scope::for_stream_method("PUT"), Some(Scope::Write));
        assert_eq!(Scope::for_stream_method("POST"), Some(Scope::Write));
        assert_eq!(Scope::for_stream_method("DELETE"), Some(Scope::Delete));
        assert_eq!(Scope::for_stream_method("OPTIONS"), None);
        assert_eq!(
            Scope::for_stream_method("get"),
            None,
            "methods are case-sensitive"
        );
    }

    #[test]
    fn names_round_trip_and_unknown_names_fail() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert_eq!("subscribe".parse::<Scope>(), Ok(Scope::Subscribe));
        assert!("Read".parse::<Scope>().is_err());
        assert!("".parse::<Scope>().is_err());
    }
}
