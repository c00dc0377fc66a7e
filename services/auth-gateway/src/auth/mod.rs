//! Who is calling and what they may do: the bearer token found in a
//! request ([`credentials`]), verified ([`token`]) and turned into the rights
//! of its row ([`authenticator`], [`grant`]): scopes ([`scope`]) on stream
//! path patterns (`service_common::stream_pattern`), within a request budget ([`rate_limit`]).
//! [`identity`] is how the caller is named to stream-server; [`subscription`]
//! is which subscriptions a token reaches.

pub mod authenticator;
pub mod credentials;
pub mod grant;
pub mod identity;
pub mod rate_limit;
pub mod scope;
pub mod subscription;
pub mod token;
