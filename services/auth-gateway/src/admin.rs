//! The HTTP admin API under `/admin/tokens`, for callers holding the
//! `admin` scope: list, inspect, issue and revoke tokens. Issued tokens are
//! returned once, in the creation response; listings never contain them.
//!
//! An admin token manages its own subtree only: itself and the tokens it
//! issued, directly or through tokens it issued. Tokens outside it answer
//! 404, exactly as unknown ones, so their existence is not revealed. What it
//! issues must fit within its own scopes, stream patterns and expiry (403
//! otherwise); only the CLI issues tokens without that ceiling.
//!
//! * `GET /admin/tokens` — the subtree's rows
//! * `POST /admin/tokens` — issue: `{"subject", "scopes", "streams", "ttl", "description"}`
//! * `GET /admin/tokens/{id}` — one row
//! * `DELETE /admin/tokens/{id}` — revoke (204; 404 if unknown or already revoked)
//! * `DELETE /admin/tokens/{id}?cascade=true` — revoke it and every token
//!   it issued, directly or not (200 with `{"revoked": n}`; 404 if nothing
//!   was left to revoke)

use crate::error::GatewayError;
use crate::grant::Grant;
use crate::http::{Gateway, SharedGateway, authenticate};
use crate::issuer::{Authority, IssueError, Issuer, TokenInfo, TokenRequest};
use crate::pattern::StreamPattern;
use crate::scope::Scope;
use crate::store::Reach;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use http::header::{CACHE_CONTROL, HeaderValue};
use http_body_util::BodyExt;
use serde::Deserialize;
use std::sync::Arc;

/// Largest accepted admin request body.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<SharedGateway> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", get(show).delete(revoke))
}

/// The body of `POST /admin/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    subject: String,
    scopes: Vec<String>,
    #[serde(default)]
    streams: Vec<String>,
    /// A duration such as `24h`, `30m` or `7days`.
    #[serde(default = "default_ttl")]
    ttl: String,
    #[serde(default)]
    description: String,
}

fn default_ttl() -> String {
    "24h".into()
}

/// Authenticates an admin request; anything but the `admin` scope is 403.
/// Returns the caller's grant with the request.
async fn require_admin(
    gateway: &Gateway,
    request: Request,
) -> Result<(Arc<Grant>, Request), GatewayError> {
    let (parts, body) = request.into_parts();
    let caller = authenticate(gateway, &parts).await?;
    if !caller.grant.has_scope(Scope::Admin) {
        return Err(GatewayError::InsufficientScope {
            scope: Scope::Admin,
            target: "/admin/tokens".into(),
        });
    }
    Ok((caller.grant, Request::from_parts(parts, body)))
}

/// The rows an admin token manages: its own subtree.
fn reach(grant: &Grant) -> Reach<'_> {
    Reach::SubtreeOf(&grant.token_id)
}

/// Whether the query asks for `cascade=true`; other parameters are left
/// alone.
fn cascade_requested(query: Option<&str>) -> Result<bool, GatewayError> {
    let mut cascade = false;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "cascade" {
            cascade = match value.as_ref() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(GatewayError::BadRequest(format!(
                        "cascade must be true or false, not {value:?}"
                    )));
                }
            };
        }
    }
    Ok(cascade)
}

fn store_error(e: impl std::fmt::Display) -> GatewayError {
    tracing::warn!("admin API: {e}");
    GatewayError::AuthUnavailable
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn list(
    State(gateway): State<SharedGateway>,
    request: Request,
) -> Result<Response, GatewayError> {
    let (caller, _) = require_admin(&gateway, request).await?;
    let rows = gateway
        .authenticator
        .store()
        .list(reach(&caller))
        .await
        .map_err(store_error)?;
    let tokens: Vec<TokenInfo> = rows.into_iter().map(TokenInfo::from).collect();
    Ok(no_store(Json(tokens).into_response()))
}

async fn show(
    State(gateway): State<SharedGateway>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, GatewayError> {
    let (caller, _) = require_admin(&gateway, request).await?;
    let row = gateway
        .authenticator
        .store()
        .find_within(reach(&caller), &id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| GatewayError::NotFound(format!("no token {id:?}")))?;
    Ok(no_store(Json(TokenInfo::from(row)).into_response()))
}

async fn revoke(
    State(gateway): State<SharedGateway>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, GatewayError> {
    let (caller, request) = require_admin(&gateway, request).await?;
    let cascade = cascade_requested(request.uri().query())?;
    let revoked = gateway
        .authenticator
        .store()
        .revoke_within(reach(&caller), &id, cascade)
        .await
        .map_err(store_error)?;
    if revoked == 0 {
        return Err(GatewayError::NotFound(format!(
            "no active token {id:?} to revoke"
        )));
    }
    tracing::info!(
        token_id = %id,
        by = %caller.token_id,
        cascade,
        revoked,
        "token revoked through the admin API"
    );
    if cascade {
        Ok(Json(serde_json::json!({ "revoked": revoked })).into_response())
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

async fn create(
    State(gateway): State<SharedGateway>,
    request: Request,
) -> Result<Response, GatewayError> {
    let (caller, request) = require_admin(&gateway, request).await?;
    let body = http_body_util::Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| GatewayError::BadRequest(format!("cannot read the body: {e}")))?
        .to_bytes();
    let input: CreateToken = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::BadRequest(format!("invalid token request: {e}")))?;
    let token_request = parse(input)?;
    let config = &gateway.config;
    let issuer = Issuer {
        store: gateway.authenticator.store(),
        keys: gateway.authenticator.keys(),
        issuer: &config.jwt.issuer,
        audience: &config.jwt.audience,
    };
    let issued = issuer
        .issue(token_request, Authority::Token(&caller))
        .await
        .map_err(|e| match e {
            IssueError::Invalid(reason) => GatewayError::BadRequest(reason),
            IssueError::ExceedsIssuer(excess) => {
                // The client learns only that it asked too much; which part is
                // for the operator.
                tracing::info!(
                    issuer = %caller.token_id,
                    "admin API: refused a token beyond its issuer's rights: {excess}"
                );
                GatewayError::ExceedsIssuer
            }
            IssueError::IssuerInactive => GatewayError::InvalidToken("token revoked or expired"),
            IssueError::Store(e) => store_error(e),
            IssueError::Signing(e) => {
                tracing::error!("admin API: {e}");
                GatewayError::Internal
            }
        })?;
    tracing::info!(
        token_id = %issued.info.id,
        subject = %issued.info.subject,
        issued_by = %caller.token_id,
        "token issued through the admin API"
    );
    Ok(no_store(
        (StatusCode::CREATED, Json(issued)).into_response(),
    ))
}

fn parse(input: CreateToken) -> Result<TokenRequest, GatewayError> {
    let scopes = input
        .scopes
        .iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let streams = input
        .streams
        .iter()
        .map(|p| p.parse::<StreamPattern>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let ttl = humantime::parse_duration(&input.ttl)
        .map_err(|e| GatewayError::BadRequest(format!("invalid ttl {:?}: {e}", input.ttl)))?;
    Ok(TokenRequest {
        subject: input.subject,
        scopes,
        streams,
        ttl,
        description: input.description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cascade_is_read_from_the_query() {
        assert!(!cascade_requested(None).expect("no query"));
        assert!(cascade_requested(Some("cascade=true")).expect("true"));
        assert!(!cascade_requested(Some("cascade=false")).expect("false"));
        assert!(cascade_requested(Some("x=1&cascade=true")).expect("among others"));
        assert!(matches!(
            cascade_requested(Some("cascade=yes")),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            cascade_requested(Some("cascade")),
            Err(GatewayError::BadRequest(_))
        ));
    }
}
