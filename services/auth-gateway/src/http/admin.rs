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

use super::extract::{AdminCaller, AppJson, MAX_JSON_BODY_BYTES};
use super::state::SharedGateway;
use crate::auth::grant::Grant;
use crate::auth::scope::Scope;
use crate::error::GatewayError;
use crate::tokens::issuer::{Authority, IssueError, Issuer, TokenInfo, TokenRequest};
use crate::tokens::store::Reach;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use http::header::{CACHE_CONTROL, HeaderValue};
use serde::Deserialize;
use service_common::stream_pattern::StreamPattern;

pub fn routes() -> Router<SharedGateway> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", get(show).delete(revoke))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
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

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn list(
    State(gateway): State<SharedGateway>,
    AdminCaller(caller): AdminCaller,
) -> Result<Response, GatewayError> {
    let rows = gateway.authenticator.store().list(reach(&caller)).await?;
    let tokens: Vec<TokenInfo> = rows.into_iter().map(TokenInfo::from).collect();
    Ok(no_store(Json(tokens).into_response()))
}

async fn show(
    State(gateway): State<SharedGateway>,
    AdminCaller(caller): AdminCaller,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let row = gateway
        .authenticator
        .store()
        .find_within(reach(&caller), &id)
        .await?
        .ok_or_else(|| GatewayError::NotFound(format!("no token {id:?}")))?;
    Ok(no_store(Json(TokenInfo::from(row)).into_response()))
}

async fn revoke(
    State(gateway): State<SharedGateway>,
    AdminCaller(caller): AdminCaller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, GatewayError> {
    let cascade = cascade_requested(query.as_deref())?;
    let revoked = gateway
        .authenticator
        .store()
        .revoke_within(reach(&caller), &id, cascade)
        .await?;
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
    AdminCaller(caller): AdminCaller,
    AppJson(input): AppJson<CreateToken>,
) -> Result<Response, GatewayError> {
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
        .map_err(|e| {
            if let IssueError::ExceedsIssuer(excess) = &e {
                // The client learns only that it asked too much; which part
                // is for the operator.
                tracing::info!(
                    issuer = %caller.token_id,
                    "admin API: refused a token beyond its issuer's rights: {excess}"
                );
            }
            GatewayError::from(e)
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
