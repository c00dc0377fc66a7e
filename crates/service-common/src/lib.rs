//! What both services share, so a client sees one behaviour whichever of
//! them answers:
//!
//! * [`serve`] — the accept loop: TLS, HTTP/1.1 and HTTP/2, connection
//!   limits, graceful shutdown;
//! * [`limits`] — the settings that bound slow or numerous clients;
//! * [`body`] — request bodies held to a pace;
//! * [`accept`] — what an accepted connection gets before HTTP;
//! * [`problem`] — RFC 9457 `application/problem+json` refusals;
//! * [`cors`] — the CORS policy (origins from configuration);
//! * [`shutdown`] — the SIGINT / SIGTERM signal;
//! * [`settings`] — checks shared by both configurations.

pub mod accept;
pub mod body;
pub mod cors;
pub mod limits;
pub mod problem;
pub mod serve;
pub mod settings;
pub mod shutdown;
