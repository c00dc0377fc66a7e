//! Who is calling and what they may do: the bearer token found in a
//! request ([`credentials`]), verified ([`token`]) and turned into the rights
//! of its row ([`authenticator`], [`grant`]): scopes ([`scope`]) on stream
//! path patterns ([`pattern`]), within a request budget ([`rate_limit`]).
//! [`identity`] is how the caller is named to stream-server.

pub mod authenticator;
pub mod credentials;
pub mod grant;
pub mod identity;
pub mod pattern;
pub mod rate_limit;
pub mod scope;
pub mod token;
