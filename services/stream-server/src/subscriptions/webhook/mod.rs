//! Webhook delivery's building blocks (PROTOCOL §6.2, §6.5, §7.1, §12.8,
//! §12.10): what signs a wake, which URLs may receive one, and what sends
//! it. The subscription core decides when to wake and what to send; these
//! modules hold no subscription state.
//!
//! * [`signing`] — the server's Ed25519 signing key, persisted beside the
//!   data when there is a data directory, its `kid`, the JWK Set that
//!   publishes it, and the `Webhook-Signature` header.
//! * [`url_policy`] — SSRF protection: the URL check at subscription
//!   creation and the check on every address a webhook host resolves to.
//! * [`client`] — the HTTP client that POSTs a signed wake and reads
//!   whether the receiver finished (`{"done": true}`).

pub mod client;
pub mod signing;
pub mod url_policy;

pub use client::{ClientBuildError, DeliveryError, WebhookClient, WebhookReply};
pub use signing::{SigningError, SigningKey};
pub use url_policy::{UrlPolicy, UrlRejected, WebhookUrl};
