//! The HTTP client that delivers a wake (PROTOCOL §7.1): one signed POST
//! to the subscription's webhook URL, read back as delivered or not, and
//! finished (`{"done": true}`) or not.
//!
//! What keeps it off private networks, besides the URL check:
//! * every address a host name resolves to passes through
//!   [`UrlPolicy::check_resolved`] before any connection, so a name that
//!   points (or is re-pointed) at a private address gets nowhere;
//! * redirects are not followed, since a redirect could lead anywhere;
//! * proxies from the environment are ignored, so the checked address is
//!   the one connected to.

use super::url_policy::{UrlPolicy, UrlRejected, WebhookUrl};
use bytes::Bytes;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::error::Error as _;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The most of a receiver's reply that is read. A reply that says
/// `{"done": true}` is tiny; anything longer is taken as not done.
const MAX_REPLY_LEN: usize = 64 * 1024;

/// Connecting takes at most this long (or the whole timeout, if shorter):
/// a receiver that cannot be reached by then will not be.
const MAX_CONNECT_TIME: Duration = Duration::from_secs(10);

/// The header carrying the wake's signature.
const SIGNATURE_HEADER: &str = "webhook-signature";

/// Sends wakes to webhook URLs. Cheap to clone; connections are pooled.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    policy: UrlPolicy,
}

/// What a receiver that accepted a wake (a 2xx) answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookReply {
    /// The reply was JSON with `"done": true`: the receiver finished the
    /// wake, so its offsets are acked and the lease released.
    pub done: bool,
}

/// The webhook client could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("could not build the webhook HTTP client: {0}")]
pub struct ClientBuildError(#[source] reqwest::Error);

/// Why a wake was not delivered. Each is a failed attempt, to be retried
/// with backoff.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The URL, or every address its host resolved to, is refused by the
    /// policy; nothing was sent.
    #[error("webhook URL refused: {0}")]
    UrlRejected(#[from] UrlRejected),
    #[error("webhook request timed out")]
    Timeout,
    /// The receiver answered something other than a 2xx; a redirect
    /// counts, as it is not followed.
    #[error("webhook receiver answered {0}")]
    Status(StatusCode),
    /// Resolving, connecting or exchanging the request failed.
    #[error("webhook request failed: {0}")]
    Request(String),
}

impl WebhookClient {
    /// A client delivering only where `policy` allows, each delivery taking
    /// at most `timeout` in all.
    pub fn new(policy: UrlPolicy, timeout: Duration) -> Result<WebhookClient, ClientBuildError> {
        Self::with_lookup(policy, timeout, Arc::new(SystemLookup))
    }

    /// As [`WebhookClient::new`], resolving host names with `lookup`.
    pub(crate) fn with_lookup(
        policy: UrlPolicy,
        timeout: Duration,
        lookup: Arc<dyn HostLookup>,
    ) -> Result<WebhookClient, ClientBuildError> {
        let resolver = PolicyResolver { policy, lookup };
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "durable-streams-server/",
                env!("CARGO_PKG_VERSION")
            ))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(resolver))
            .connect_timeout(timeout.min(MAX_CONNECT_TIME))
            .timeout(timeout)
            .build()
            .map_err(ClientBuildError)?;
        Ok(WebhookClient { http, policy })
    }

    /// POSTs one wake: `body` (JSON) signed by `signature_header`. Success
    /// is a 2xx; the reply says whether the receiver finished.
    pub async fn deliver(
        &self,
        url: &WebhookUrl,
        signature_header: &str,
        body: Bytes,
    ) -> Result<WebhookReply, DeliveryError> {
        // Checked again under this client's policy: a URL accepted under
        // another (a development exception since turned off) is refused.
        let url = self.policy.check(url.as_str())?;
        let response = self
            .http
            .post(url.as_url().clone())
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature_header)
            .body(body)
            .send()
            .await
            .map_err(delivery_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(DeliveryError::Status(status));
        }
        Ok(WebhookReply {
            done: reply_is_done(response).await,
        })
    }
}

/// Whether a receiver's reply body is JSON with `"done": true`. A reply
/// that is too long, unreadable or not such JSON leaves the wake open: the
/// receiver was reached, and can still finish through the callback.
async fn reply_is_done(mut response: reqwest::Response) -> bool {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_REPLY_LEN as u64)
    {
        return false;
    }
    let mut reply = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if reply.len() + chunk.len() <= MAX_REPLY_LEN => {
                reply.extend_from_slice(&chunk);
            }
            Ok(Some(_)) => return false,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(error = %error_chain(&error), "could not read the webhook reply");
                return false;
            }
        }
    }
    serde_json::from_slice::<serde_json::Value>(&reply)
        .is_ok_and(|reply| reply.get("done") == Some(&serde_json::Value::Bool(true)))
}

/// Classifies a failed request: the resolver's refusal is found in the
/// error's sources.
fn delivery_error(error: reqwest::Error) -> DeliveryError {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(rejected) = cause.downcast_ref::<UrlRejected>() {
            return DeliveryError::UrlRejected(rejected.clone());
        }
        source = cause.source();
    }
    if error.is_timeout() {
        return DeliveryError::Timeout;
    }
    DeliveryError::Request(error_chain(&error))
}

/// An error and its causes on one line: reqwest's own message leaves the
/// cause (refused, reset, certificate) out.
/// The URL is left out: its query may carry the receiver's own secret.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "<webhook url>");
    }
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A future resolving a host name to addresses.
pub(crate) type Lookup = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves host names; the system resolver in production, a fixed table
/// in tests so that no test depends on (or reaches) the network.
pub(crate) trait HostLookup: Send + Sync {
    fn lookup(&self, host: String) -> Lookup;
}

/// The system resolver (getaddrinfo, through tokio).
struct SystemLookup;

impl HostLookup for SystemLookup {
    fn lookup(&self, host: String) -> Lookup {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// reqwest's resolver: looks a name up and keeps only the addresses the
/// policy allows. IP-literal hosts do not come here; the URL check has
/// judged them.
struct PolicyResolver {
    policy: UrlPolicy,
    lookup: Arc<dyn HostLookup>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let lookup = Arc::clone(&self.lookup);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = lookup.lookup(host.clone()).await?;
            let allowed = allowed_addresses(policy, &host, found)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The addresses of `host` that `policy` allows, as socket addresses whose
/// port the connector fills in. Refuses the name when none is left.
fn allowed_addresses(
    policy: UrlPolicy,
    host: &str,
    found: Vec<IpAddr>,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let mut refusal = None;
    let mut allowed = Vec::with_capacity(found.len());
    for addr in found {
        match policy.check_resolved(host, addr) {
            Ok(()) => allowed.push(SocketAddr::new(addr, 0)),
            Err(rejected) => {
                tracing::debug!(host, %addr, reason = %rejected, "webhook host address refused");
                refusal.get_or_insert(rejected);
            }
        }
    }
    match refusal {
        Some(rejected) if allowed.is_empty() => Err(Box::new(rejected)),
        _ if allowed.is_empty() => Err(Box::new(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} has no addresses"),
        ))),
        _ => Ok(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use http::HeaderMap;
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use std::str::FromStr;
    use tokio::net::TcpListener;

    const STRICT: UrlPolicy = UrlPolicy {
        allow_insecure_local: false,
    };
    const DEV: UrlPolicy = UrlPolicy {
        allow_insecure_local: true,
    };
    const TIMEOUT: Duration = Duration::from_secs(5);

    /// One request a receiver got.
    #[derive(Debug)]
    struct Seen {
        path: String,
        headers: HeaderMap,
        body: Bytes,
    }

    type SeenLog = Arc<Mutex<Vec<Seen>>>;

    /// A webhook receiver on loopback answering each path as `routes` says,
    /// and the log of what it received.
    async fn receiver(routes: Router) -> (SocketAddr, SeenLog) {
        let seen = SeenLog::default();
        let log = Arc::clone(&seen);
        let app = routes.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let log = Arc::clone(&log);
                async move {
                    let (parts, body) = request.into_parts();
                    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                    log.lock().push(Seen {
                        path: parts.uri.path().to_owned(),
                        headers: parts.headers.clone(),
                        body: body.clone(),
                    });
                    let request = axum::extract::Request::from_parts(parts, body.into());
                    next.run(request).await
                }
            },
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, seen)
    }

    fn url(policy: UrlPolicy, url: &str) -> WebhookUrl {
        policy.check(url).unwrap()
    }

    /// Resolves from a fixed table and records what it was asked.
    #[derive(Default)]
    struct TableLookup {
        table: HashMap<&'static str, Vec<IpAddr>>,
        asked: Mutex<Vec<String>>,
    }

    impl TableLookup {
        fn new(entries: &[(&'static str, &[&str])]) -> Arc<TableLookup> {
            let table = entries
                .iter()
                .map(|(name, addrs)| (*name, addrs.iter().map(|a| a.parse().unwrap()).collect()))
                .collect();
            Arc::new(TableLookup {
                table,
                asked: Mutex::default(),
            })
        }
    }

    impl HostLookup for TableLookup {
        fn lookup(&self, host: String) -> Lookup {
            let found = self.table.get(host.as_str()).cloned();
            self.asked.lock().push(host.clone());
            Box::pin(
                async move { found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, host)) },
            )
        }
    }

    #[tokio::test]
    async fn a_wake_arrives_signed_and_intact() {
        let (addr, seen) = receiver(Router::new().route("/hook", post(|| async { "" }))).await;
        let client = WebhookClient::new(DEV, TIMEOUT).unwrap();
        let body = Bytes::from_static(br#"{"subscription_id":"sub-1","wake_id":"w_1"}"#);
        let header = "t=1,kid=ds_x,ed25519=abc";

        let reply = client
            .deliver(
                &url(DEV, &format!("http://{addr}/hook")),
                header,
                body.clone(),
            )
            .await
            .unwrap();

        assert_eq!(reply, WebhookReply { done: false });
        let seen = seen.lock();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].path, "/hook");
        assert_eq!(seen[0].body, body);
        assert_eq!(seen[0].headers["webhook-signature"], header);
        assert_eq!(seen[0].headers["content-type"], "application/json");
    }

    /// `{"done":true}` padded past the reply limit, sent without a length.
    async fn huge_chunked_done() -> axum::body::Body {
        let padding = Bytes::from(vec![b' '; MAX_REPLY_LEN]);
        let parts = [
            Bytes::from_static(br#"{"done":true,"#),
            padding,
            Bytes::from_static(br#""padding":1}"#),
        ];
        axum::body::Body::from_stream(futures_util::stream::iter(parts.map(Ok::<_, io::Error>)))
    }

    #[tokio::test]
    async fn only_a_json_done_true_reply_finishes_the_wake() {
        let padded_done = format!(
            r#"{{"done":true,"padding":"{}"}}"#,
            "x".repeat(MAX_REPLY_LEN)
        );
        let routes = Router::new()
            .route("/done", post(|| async { r#"{"done": true}"# }))
            .route("/done-extra", post(|| async { r#"{"ok":1,"done":true}"# }))
            .route("/not-done", post(|| async { r#"{"done": false}"# }))
            .route("/string", post(|| async { r#"{"done": "true"}"# }))
            .route("/text", post(|| async { "done" }))
            .route("/array", post(|| async { r#"[{"done": true}]"# }))
            .route(
                "/accepted",
                post(|| async { (StatusCode::ACCEPTED, r#"{"done":true}"#) }),
            )
            .route("/no-content", post(|| async { StatusCode::NO_CONTENT }))
            .route("/huge", post(move || async move { padded_done }))
            .route("/huge-chunked", post(huge_chunked_done));
        let (addr, _) = receiver(routes).await;
        let client = WebhookClient::new(DEV, TIMEOUT).unwrap();
        for (path, done) in [
            ("done", true),
            ("done-extra", true),
            ("accepted", true),
            ("not-done", false),
            ("string", false),
            ("text", false),
            ("array", false),
            ("no-content", false),
            ("huge", false),
            ("huge-chunked", false),
        ] {
            let target = url(DEV, &format!("http://{addr}/{path}"));
            let reply = client
                .deliver(&target, "t=1", Bytes::from_static(b"{}"))
                .await;
            assert_eq!(reply.unwrap(), WebhookReply { done }, "{path}");
        }
    }

    #[tokio::test]
    async fn an_error_status_is_a_failed_delivery() {
        let routes = Router::new()
            .route(
                "/fail",
                post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, r#"{"done":true}"#) }),
            )
            .route("/gone", post(|| async { StatusCode::NOT_FOUND }));
        let (addr, _) = receiver(routes).await;
        let client = WebhookClient::new(DEV, TIMEOUT).unwrap();
        for (path, status) in [
            ("fail", StatusCode::INTERNAL_SERVER_ERROR),
            ("gone", StatusCode::NOT_FOUND),
        ] {
            let target = url(DEV, &format!("http://{addr}/{path}"));
            let result = client.deliver(&target, "t=1", Bytes::new()).await;
            assert!(
                matches!(result, Err(DeliveryError::Status(s)) if s == status),
                "{result:?}"
            );
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (target_addr, target_seen) =
            receiver(Router::new().route("/target", post(|| async { r#"{"done":true}"# }))).await;
        let location = format!("http://{target_addr}/target");
        let redirect = move || {
            let location = location.clone();
            async move {
                Response::builder()
                    .status(StatusCode::FOUND)
                    .header(http::header::LOCATION, location)
                    .body(axum::body::Body::empty())
                    .unwrap()
                    .into_response()
            }
        };
        let (addr, seen) = receiver(Router::new().route("/hook", post(redirect))).await;
        let client = WebhookClient::new(DEV, TIMEOUT).unwrap();

        let result = client
            .deliver(
                &url(DEV, &format!("http://{addr}/hook")),
                "t=1",
                Bytes::new(),
            )
            .await;

        assert!(
            matches!(result, Err(DeliveryError::Status(StatusCode::FOUND))),
            "{result:?}"
        );
        assert_eq!(seen.lock().len(), 1);
        assert!(target_seen.lock().is_empty());
    }

    #[test]
    fn resolved_addresses_are_filtered_by_the_policy() {
        let private: IpAddr = "10.0.0.1".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let public: IpAddr = "93.184.215.14".parse().unwrap();

        let refused = allowed_addresses(STRICT, "evil.test", vec![private]).unwrap_err();
        assert!(refused.downcast_ref::<UrlRejected>().is_some(), "{refused}");
        assert_eq!(
            allowed_addresses(STRICT, "mixed.test", vec![private, public, loopback]).unwrap(),
            [SocketAddr::new(public, 0)]
        );
        assert_eq!(
            allowed_addresses(DEV, "localhost", vec![private, loopback]).unwrap(),
            [SocketAddr::new(loopback, 0)]
        );
        // Nothing found is a lookup failure, not a refusal.
        let empty = allowed_addresses(STRICT, "empty.test", Vec::new()).unwrap_err();
        assert!(empty.downcast_ref::<UrlRejected>().is_none());
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_refused_before_connecting() {
        let lookup = TableLookup::new(&[("evil.test", &["10.0.0.1"])]);
        // The resolver on its own first, so that a broken filter fails here
        // rather than letting the client connect to a non-loopback address.
        let resolver = PolicyResolver {
            policy: STRICT,
            lookup: lookup.clone(),
        };
        let resolved = resolver.resolve(Name::from_str("evil.test").unwrap()).await;
        assert!(resolved.is_err());

        let client = WebhookClient::with_lookup(STRICT, TIMEOUT, lookup.clone()).unwrap();
        let result = client
            .deliver(&url(STRICT, "https://evil.test/hook"), "t=1", Bytes::new())
            .await;

        let Err(DeliveryError::UrlRejected(UrlRejected::Address { addr, .. })) = result else {
            panic!("expected a refusal, got {result:?}");
        };
        assert_eq!(addr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(*lookup.asked.lock(), ["evil.test", "evil.test"]);
    }

    #[tokio::test]
    async fn a_name_rebound_to_loopback_never_gets_a_connection() {
        // A listener where the connection would go, were the address used.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let lookup = TableLookup::new(&[("rebind.test", &["127.0.0.1"])]);
        for policy in [STRICT, DEV] {
            let client = WebhookClient::with_lookup(policy, TIMEOUT, lookup.clone()).unwrap();
            let target = url(policy, &format!("https://rebind.test:{port}/hook"));

            let result = client.deliver(&target, "t=1", Bytes::new()).await;

            assert!(
                matches!(result, Err(DeliveryError::UrlRejected(_))),
                "{result:?}"
            );
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "a connection was attempted");
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_policy_in_development() {
        let (addr, seen) = receiver(Router::new().route("/hook", post(|| async { "" }))).await;
        let lookup = TableLookup::new(&[("localhost", &["127.0.0.1"])]);
        let client = WebhookClient::with_lookup(DEV, TIMEOUT, lookup.clone()).unwrap();
        let target = url(DEV, &format!("http://localhost:{}/hook", addr.port()));

        client.deliver(&target, "t=1", Bytes::new()).await.unwrap();

        assert_eq!(seen.lock().len(), 1);
        assert_eq!(*lookup.asked.lock(), ["localhost"]);
    }

    #[tokio::test]
    async fn urls_are_checked_again_under_the_clients_policy() {
        let (addr, seen) = receiver(Router::new().route("/hook", post(|| async { "" }))).await;
        let client = WebhookClient::new(STRICT, TIMEOUT).unwrap();
        let result = client
            .deliver(
                &url(DEV, &format!("http://{addr}/hook")),
                "t=1",
                Bytes::new(),
            )
            .await;
        assert!(
            matches!(result, Err(DeliveryError::UrlRejected(_))),
            "{result:?}"
        );
        assert!(seen.lock().is_empty());
    }

    #[tokio::test]
    async fn a_slow_receiver_times_out() {
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            ""
        };
        let (addr, _) = receiver(Router::new().route("/hook", post(slow))).await;
        let client = WebhookClient::new(DEV, Duration::from_millis(200)).unwrap();
        let result = client
            .deliver(
                &url(DEV, &format!("http://{addr}/hook")),
                "t=1",
                Bytes::new(),
            )
            .await;
        assert!(matches!(result, Err(DeliveryError::Timeout)), "{result:?}");
    }

    #[tokio::test]
    async fn an_unreachable_receiver_is_a_request_error() {
        // A loopback port with nothing listening on it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = WebhookClient::new(DEV, TIMEOUT).unwrap();
        let result = client
            .deliver(
                &url(DEV, &format!("http://{addr}/hook")),
                "t=1",
                Bytes::new(),
            )
            .await;
        let Err(DeliveryError::Request(detail)) = result else {
            panic!("expected a request error, got {result:?}");
        };
        assert!(detail.contains("onnect"), "{detail}");
    }
}
