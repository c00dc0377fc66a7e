//! The token table: rows in Postgres ([`store`], migrations in
//! `migrations/`) and issuing new tokens for the CLI and the admin API
//! ([`issuer`]).

pub mod issuer;
pub mod store;
