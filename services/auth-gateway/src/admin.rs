//! The HTTP admin API under `/admin/tokens`, for callers holding the
//! `admin` scope: list, inspect, issue and revoke tokens. Issued tokens are
//! returned once, in the creation response; listings never contain them.
//!
//! * `GET /admin/tokens` — every token's row
//! * `POST /admin/tokens` — issue: `{"subject", "scopes", "streams", "ttl", "description"}`
//! * `GET /admin/tokens/{id}` — one row
//! * `DELETE /admin/tokens/{id}` — revoke (204; 404 if unknown or already revoked)

use crate::error::GatewayError;
use crate::http::{Gateway, SharedGateway, authenticate};
use crate::issuer::{IssueError, Issuer, TokenInfo, TokenRequest};
use crate::pattern::StreamPattern;
use crate::scope::Scope;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use http::header::{CACHE_CONTROL, HeaderValue};
use http_body_util::BodyExt;
use serde::Deserialize;

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
async fn require_admin(gateway: &Gateway, request: Request) -> Result<Request, GatewayError> {
    let (parts, body) = request.into_parts();
    let caller = authenticate(gateway, &parts).await?;
    if !caller.grant.has_scope(Scope::Admin) {
        return Err(GatewayError::InsufficientScope {
            scope: Scope::Admin,
            target: "/admin/tokens".into(),
        });
    }
    Ok(Request::from_parts(parts, body))
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
    require_admin(&gateway, request).await?;
    let rows = gateway
        .authenticator
        .store()
        .list()
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
    require_admin(&gateway, request).await?;
    let row = gateway
        .authenticator
        .store()
        .find(&id)
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
    require_admin(&gateway, request).await?;
    let revoked = gateway
        .authenticator
        .store()
        .revoke(&id)
        .await
        .map_err(store_error)?;
    if !revoked {
        return Err(GatewayError::NotFound(format!(
            "no active token {id:?} to revoke"
        )));
    }
    tracing::info!(token_id = %id, "token revoked through the admin API");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create(
    State(gateway): State<SharedGateway>,
    request: Request,
) -> Result<Response, GatewayError> {
    let request = require_admin(&gateway, request).await?;
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
    let issued = issuer.issue(token_request).await.map_err(|e| match e {
        IssueError::Invalid(reason) => GatewayError::BadRequest(reason),
        IssueError::Store(e) => store_error(e),
        IssueError::Signing(e) => {
            tracing::error!("admin API: {e}");
            GatewayError::Internal
        }
    })?;
    tracing::info!(
        token_id = %issued.info.id,
        subject = %issued.info.subject,
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
