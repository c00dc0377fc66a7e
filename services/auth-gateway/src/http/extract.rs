//! Who is calling, as extractors: the bearer token authenticated and its
//! rate limit charged ([`authenticate`], used by the stream route, which
//! needs the request's parts afterwards), and an admin caller
//! ([`AdminCaller`]) for the admin API. Each rejects with the gateway's
//! error: 401, 403 or 429 to the client, the reason only in the log.

use super::state::{Gateway, SharedGateway};
use crate::auth::credentials;
use crate::auth::grant::Grant;
use crate::auth::scope::Scope;
use crate::error::GatewayError;
use crate::telemetry;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

/// An authenticated caller within its rate limit.
pub struct Caller {
    pub grant: Arc<Grant>,
    /// The request's query without credentials.
    pub forward_query: Option<String>,
}

/// Authenticates the request and charges its token's rate limit.
pub async fn authenticate(gateway: &Gateway, parts: &Parts) -> Result<Caller, GatewayError> {
    let found = credentials::extract(
        &parts.method,
        &parts.headers,
        parts.uri.query(),
        gateway.config.auth.query_token,
    )?;
    let token = found.token.ok_or(GatewayError::MissingToken)?;
    let grant = gateway.authenticator.authenticate(&token).await?;
    gateway.limiter.check(&grant.token_id)?;
    Ok(Caller {
        grant,
        forward_query: found.forward_query,
    })
}

/// Runs `decision` (authenticating and authorising a request) inside the
/// auth span and records its outcome there, on the request's span and in
/// the decision counter: how every stream and control request is decided.
pub async fn decide(
    decision: impl Future<Output = Result<Caller, GatewayError>>,
) -> Result<Caller, GatewayError> {
    let auth_span = telemetry::auth_span();
    let decision = decision.instrument(auth_span.clone()).await;
    telemetry::record_decision(&auth_span, decision.as_ref().map(|caller| &caller.grant));
    decision
}

/// A caller holding the `admin` scope; any other valid token is 403.
pub struct AdminCaller(pub Arc<Grant>);

impl FromRequestParts<SharedGateway> for AdminCaller {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &SharedGateway,
    ) -> Result<Self, Self::Rejection> {
        let caller = authenticate(gateway, parts).await?;
        if !caller.grant.has_scope(Scope::Admin) {
            return Err(GatewayError::InsufficientScope {
                scope: Scope::Admin,
                target: "/admin/tokens".into(),
            });
        }
        Ok(AdminCaller(caller.grant))
    }
}

/// Largest JSON body a route takes ([`AppJson`] with the route's
/// `DefaultBodyLimit` set to it).
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024;

/// A JSON body, refused in the gateway's own problem format: `400` when it
/// is not the expected JSON, `413` over the route's body limit, `408` when
/// it arrives too slowly.
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = GatewayError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(AppJson(value)),
            Err(rejection) => Err(json_refusal(rejection)),
        }
    }
}

fn json_refusal(rejection: JsonRejection) -> GatewayError {
    if let Some(timeout) = service_common::body::BodyTimeout::find(&rejection) {
        return GatewayError::BodyTimeout(timeout.clone());
    }
    if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        return GatewayError::PayloadTooLarge {
            limit: MAX_JSON_BODY_BYTES as u64,
        };
    }
    GatewayError::BadRequest(rejection.body_text())
}
