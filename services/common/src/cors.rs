//! The CORS policy: preflights answered for every route, the given request
//! headers allowed, the given response headers readable by scripts.
//!
//! tower-http's [`Cors`](tower_http::cors::Cors) applies it, to the
//! requests that can need it (see [`BrowserCors`]): a response's CORS
//! headers are read only by a browser, which always sends `Origin` with a
//! cross-origin request, or by a cache that may hand the response to one
//! later.

use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer, ResponseFuture};

pub use crate::headers::{PROTOCOL_REQUEST_HEADERS, PROTOCOL_RESPONSE_HEADERS};

/// Parses a `CORS_ORIGINS` setting: `*` (any origin, `None`) or a
/// comma-separated list.
pub fn parse_origins(setting: &str) -> Option<Vec<String>> {
    let origins = setting.trim();
    if origins == "*" {
        return None;
    }
    Some(
        origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect(),
    )
}

/// The layer for `origins` (`None` = any).
pub fn layer(
    origins: Option<Vec<String>>,
    allowed: impl IntoIterator<Item = HeaderName>,
    exposed: impl IntoIterator<Item = HeaderName>,
) -> BrowserCorsLayer {
    let allow_origin = match origins {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    let cors = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(allowed.into_iter().collect::<Vec<_>>())
        .expose_headers(exposed.into_iter().collect::<Vec<_>>())
        .max_age(Duration::from_secs(86_400));
    BrowserCorsLayer {
        cors: Arc::new(cors),
    }
}

/// Wraps a service in [`BrowserCors`].
#[derive(Debug, Clone)]
pub struct BrowserCorsLayer {
    cors: Arc<CorsLayer>,
}

impl<S> Layer<S> for BrowserCorsLayer {
    type Service = BrowserCors<S>;

    fn layer(&self, inner: S) -> BrowserCors<S> {
        BrowserCors {
            cors: Arc::clone(&self.cors),
            inner,
        }
    }
}

/// CORS for every request but writes that no browser sent.
///
/// A `POST`, `PUT` or `DELETE` without `Origin` goes straight to the inner
/// service: no browser reads its response's CORS headers and no cache keeps
/// it for one. For appends that is a fifth of the server's CPU per request
/// (a header map built per request, `Vary` joined anew) and 400 bytes of
/// headers per response. `GET` and `HEAD` always get the headers, since a
/// shared cache may hand a catch-up read fetched without `Origin` to a
/// browser; preflights (`OPTIONS`) are always answered.
///
/// The policy sits behind an `Arc` and wraps the inner service only for the
/// requests that need it: hyper clones the whole service stack for every
/// request, and a [`Cors`](tower_http::cors::Cors) clone copies the
/// policy's header lists.
#[derive(Debug, Clone)]
pub struct BrowserCors<S> {
    cors: Arc<CorsLayer>,
    inner: S,
}

/// Whether a request is one whose response may reach a browser's CORS check.
fn may_reach_a_browser<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(http::header::ORIGIN)
        || !matches!(
            *request.method(),
            Method::POST | Method::PUT | Method::DELETE
        )
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BrowserCors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<ResponseFuture<S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if may_reach_a_browser(&request) {
            // The service that was polled ready takes the request; a clone
            // takes its place for the next one.
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            Either::Left(self.cors.layer(ready).call(request))
        } else {
            Either::Right(self.inner.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse() {
        assert_eq!(parse_origins(" * "), None);
        assert_eq!(
            parse_origins("https://a.example, https://b.example,"),
            Some(vec!["https://a.example".into(), "https://b.example".into()])
        );
    }
}
