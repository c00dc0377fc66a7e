//! Subscriptions (PROTOCOL §6–7): durable cursors over a set of streams
//! that wake a worker, by webhook or through a wake stream, when any of
//! those streams has data past what the worker acknowledged.
//!
//! [`Subscriptions`] is the registry: every subscription by id, an index
//! of subscriptions by linked stream path (so an append finds the ones to
//! wake with one lookup), and the operations of the `__ds` routes. It
//! observes the stream registry: a new stream matching a pattern is linked
//! before its first data is visible, and new data pokes the subscriptions
//! linking the stream. Each subscription has a driver task that issues its
//! wakes and keeps its timers (see [`driver`]).
//!
//! * [`spec`] — what a subscription is asked to be: the `PUT` body,
//!   checked and normalised, and the hash a repeated `PUT` is compared by.
//! * [`state`] — one subscription's cursors and wake cycle (generations,
//!   leases, fencing, retries) as plain data, without I/O.
//! * [`subscription`] — one live subscription: its state behind a lock,
//!   the flag appends read, persistence in transition order.
//! * [`driver`] — the task per subscription that issues wakes, delivers
//!   webhooks, writes wake events and ends leases.
//! * [`store`] — what of each subscription survives a restart: one redb
//!   database (a file, or memory in `memory` mode) with a row per
//!   subscription, per wake cycle and per linked stream.
//! * [`webhook`] — delivering wakes to webhook URLs: the signing key and
//!   its JWK Set, the URL policy that keeps deliveries off private
//!   networks, and the HTTP client that sends them.
//! * [`wire`] — the JSON the subscription APIs send and read.
//! * [`error`] — why a subscription request was refused.

mod driver;
pub mod error;
pub mod spec;
pub mod state;
pub mod store;
pub mod subscription;
pub mod webhook;
pub mod wire;

pub use error::SubscriptionError;

use crate::protocol::offset::Offset;
use crate::streams::{Stream, StreamObserver, Streams};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use dashmap::DashMap;
use serde_json::{Value, json};
use service_common::stream_path::PathLimits;
use spec::{Delivery, Spec};
use state::{LinkType, State};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{Record, StoreError, SubscriptionStore};
use subscription::Subscription;
use tokio_util::sync::CancellationToken;
use webhook::{SigningError, SigningKey, UrlPolicy, WebhookClient};

/// What the registry is opened with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: UrlPolicy,
    pub webhook_timeout: Duration,
    /// The stream base path (`/v1/stream`), for callback and JWKS URLs.
    pub base_path: String,
    pub path_limits: PathLimits,
    /// Scheme and authority of callback and JWKS URLs when configured;
    /// otherwise learned from the requests (see [`Subscriptions::learn_origin`]).
    pub public_origin: Option<String>,
    /// Used until a request has shown the public origin.
    pub fallback_origin: String,
}

/// Why subscriptions could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(transparent)]
    Client(#[from] webhook::ClientBuildError),
}

/// Every subscription, by id and by linked stream.
#[derive(Debug)]
pub struct Subscriptions {
    streams: Arc<Streams>,
    store: Arc<SubscriptionStore>,
    signing: SigningKey,
    client: WebhookClient,
    settings: Settings,
    learned_origin: parking_lot::RwLock<Option<String>>,
    by_id: DashMap<String, Arc<Subscription>>,
    by_stream: DashMap<String, Vec<Arc<Subscription>>>,
    /// Serialises creations and deletions (rare): an id is never created
    /// twice at once, nor re-created while its deletion is stored.
    control: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

impl Subscriptions {
    /// Opens the subscriptions kept in `dir` (none: in memory), links what
    /// they match among `streams`, starts their drivers and observes
    /// `streams` from now on. Open the storage engine first: it refuses a
    /// new data directory that already holds files.
    pub fn open(
        streams: Arc<Streams>,
        dir: Option<&Path>,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Result<Arc<Subscriptions>, OpenError> {
        let store = Arc::new(SubscriptionStore::open(dir)?);
        let signing = SigningKey::load_or_create(dir)?;
        let client = WebhookClient::new(settings.policy, settings.webhook_timeout)?;
        let registry = Arc::new(Subscriptions {
            streams: Arc::clone(&streams),
            store,
            signing,
            client,
            settings,
            learned_origin: parking_lot::RwLock::new(None),
            by_id: DashMap::new(),
            by_stream: DashMap::new(),
            control: tokio::sync::Mutex::new(()),
            shutdown,
        });
        let tails = streams.tails();
        for (record, mut state) in registry.store.load_all()? {
            // Streams created after the last links were stored match the
            // pattern but have no link: they appeared after the
            // subscription, so all their data is new to it.
            let mut missing = Vec::new();
            for (path, _) in &tails {
                if record.spec.pattern_matches(path) && !state.links.contains_key(path) {
                    state.link(path, LinkType::Glob, Offset::ZERO);
                    missing.push(path.clone());
                }
            }
            let sub = registry.insert(record, state);
            if !missing.is_empty() {
                sub.links_changed(missing);
            }
        }
        streams.observe(Arc::new(Observer(Arc::downgrade(&registry))));
        Ok(registry)
    }

    /// The JWK Set of the webhook signing key (§6.5).
    pub fn jwks(&self) -> Bytes {
        self.signing.jwks_json()
    }

    /// Notes the public origin a request was addressed to, for the URLs
    /// in webhooks the drivers send later.
    pub fn learn_origin(&self, origin: &str) {
        if self.settings.public_origin.is_none()
            && self.learned_origin.read().as_deref() != Some(origin)
        {
            *self.learned_origin.write() = Some(origin.to_owned());
        }
    }

    fn origin(&self) -> String {
        self.settings
            .public_origin
            .clone()
            .or_else(|| self.learned_origin.read().clone())
            .unwrap_or_else(|| self.settings.fallback_origin.clone())
    }

    fn control_url(&self, origin: &str, rest: &str) -> String {
        format!("{origin}{}/__ds/{rest}", self.settings.base_path)
    }

    /// Creates the subscription `id`, or re-confirms it when the same
    /// configuration is sent again (§6.2). True if it was created.
    pub async fn put(
        self: &Arc<Self>,
        id: &str,
        body: &[u8],
        origin: &str,
    ) -> Result<(bool, Value), SubscriptionError> {
        spec::check_id(id)?;
        let spec = Spec::parse(body, self.settings.path_limits)?;
        if let Delivery::Webhook { url } = &spec.delivery {
            self.settings.policy.check(url)?;
        }
        let _control = self.control.lock().await;
        if let Some(existing) = self.get(id) {
            if existing.record.hash != spec.hash() {
                return Err(SubscriptionError::ConfigMismatch);
            }
            return Ok((false, self.view(&existing, origin)));
        }
        // Registered before the existing streams are listed, so that a
        // stream created meanwhile is linked from its start by the
        // observer; the listing's link at the tail does not move it back.
        let record = Record::new(id.to_owned(), spec, now_ms());
        let sub = Arc::new(Subscription::new(
            record,
            State::default(),
            self.shutdown.child_token(),
        ));
        self.by_id.insert(id.to_owned(), Arc::clone(&sub));
        let spec = sub.spec();
        // Linked and indexed under the state lock: a wake cannot look at a
        // link before appends to its stream reach the subscription.
        sub.with_state(|state| {
            for (path, tail) in self.streams.tails() {
                if spec.pattern_matches(&path) {
                    state.link(&path, LinkType::Glob, tail);
                    self.index(&path, &sub);
                }
            }
            for path in &spec.streams {
                let at = self.streams.tail(path).unwrap_or(Offset::ZERO);
                state.link(path, LinkType::Explicit, at);
                self.index(path, &sub);
            }
        });
        let store = Arc::clone(&self.store);
        let record = sub.record.clone();
        let state = sub.with_state(|state| state.clone());
        if let Err(error) = blocking(move || store.create(&record, &state)).await {
            self.by_id.remove(id);
            sub.ended.cancel();
            self.unindex_all(&sub);
            return Err(error);
        }
        tokio::spawn(driver::run(Arc::clone(self), Arc::clone(&sub)));
        Ok((true, self.view(&sub, origin)))
    }

    /// Registers a stored subscription, indexes its links and starts its
    /// driver.
    fn insert(self: &Arc<Self>, record: Record, state: State) -> Arc<Subscription> {
        let paths: Vec<String> = state.links.keys().cloned().collect();
        let sub = Arc::new(Subscription::new(
            record,
            state,
            self.shutdown.child_token(),
        ));
        for path in paths {
            self.index(&path, &sub);
        }
        self.by_id.insert(sub.id().to_owned(), Arc::clone(&sub));
        tokio::spawn(driver::run(Arc::clone(self), Arc::clone(&sub)));
        sub
    }

    /// Lists `sub` under `path`, so appends to the stream reach it. Called
    /// under the subscription's state lock, together with the link change
    /// it follows (the lock order is state, then index).
    fn index(&self, path: &str, sub: &Arc<Subscription>) {
        let mut subs = self.by_stream.entry(path.to_owned()).or_default();
        if !subs.iter().any(|s| Arc::ptr_eq(s, sub)) {
            subs.push(Arc::clone(sub));
        }
    }

    /// Removes every link of a subscription that is being deleted from the
    /// index.
    fn unindex_all(&self, sub: &Arc<Subscription>) {
        sub.with_state(|state| {
            for path in state.links.keys() {
                self.unindex(path, sub);
            }
        });
    }

    fn unindex(&self, path: &str, sub: &Arc<Subscription>) {
        self.by_stream.remove_if_mut(path, |_, subs| {
            subs.retain(|s| !Arc::ptr_eq(s, sub));
            subs.is_empty()
        });
    }

    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.by_id.get(id).map(|s| Arc::clone(&s))
    }

    fn existing(&self, id: &str) -> Result<Arc<Subscription>, SubscriptionError> {
        self.get(id).ok_or(SubscriptionError::NotFound)
    }

    /// The subscription as `GET` shows it (§6.3).
    pub fn describe(&self, id: &str, origin: &str) -> Result<Value, SubscriptionError> {
        let sub = self.existing(id)?;
        Ok(self.view(&sub, origin))
    }

    fn view(&self, sub: &Subscription, origin: &str) -> Value {
        let spec = sub.spec();
        let (links, failing) = sub.with_state(|state| {
            let links: Vec<Value> = state
                .links
                .iter()
                .map(|(path, link)| wire::link_view(path, link))
                .collect();
            (links, state.is_failing())
        });
        let (kind, webhook, wake_stream) = match &spec.delivery {
            Delivery::Webhook { url } => (
                "webhook",
                json!({
                    "url": url,
                    "signing": {
                        "alg": "ed25519",
                        "kid": self.signing.kid(),
                        "jwks_url": self.control_url(origin, "jwks.json"),
                    },
                }),
                Value::Null,
            ),
            Delivery::PullWake { wake_stream } => ("pull-wake", Value::Null, json!(wake_stream)),
        };
        json!({
            "id": sub.id(),
            "subscription_id": sub.id(),
            "type": kind,
            "pattern": spec.pattern.as_ref().map(|p| p.to_string()),
            "streams": links,
            "webhook": webhook,
            "wake_stream": wake_stream,
            "lease_ttl_ms": spec.lease_ttl_ms(),
            "created_at": rfc3339(sub.record.created_at_ms),
            "status": if failing { "failed" } else { "active" },
            "description": spec.description,
        })
    }

    /// Deletes the subscription (§6.3): its driver stops, requests of its
    /// wakes fail from now on, and its rows are removed.
    pub async fn delete(&self, id: &str) -> Result<(), SubscriptionError> {
        let _control = self.control.lock().await;
        let (_, sub) = self.by_id.remove(id).ok_or(SubscriptionError::NotFound)?;
        sub.ended.cancel();
        self.unindex_all(&sub);
        sub.remove_from(&self.store).await
    }

    /// Adds explicit links (§6.4), each at its stream's tail.
    pub async fn add_streams(&self, id: &str, body: &[u8]) -> Result<(), SubscriptionError> {
        let sub = self.existing(id)?;
        let paths = spec::parse_streams(body, self.settings.path_limits)?;
        if let Delivery::PullWake { wake_stream } = &sub.spec().delivery
            && paths.contains(wake_stream)
        {
            return Err(spec::SpecError::Field(spec::WAKE_STREAM_LINKED.into()).into());
        }
        sub.with_state(|state| {
            for path in &paths {
                let at = self.streams.tail(path).unwrap_or(Offset::ZERO);
                state.link(path, LinkType::Explicit, at);
                self.index(path, &sub);
            }
        });
        sub.persist(&self.store, false, paths.into_iter().collect())
            .await
    }

    /// Removes an explicit link (§6.4); a glob link to the stream stays.
    pub async fn remove_stream(&self, id: &str, path: &str) -> Result<(), SubscriptionError> {
        let sub = self.existing(id)?;
        spec::check_stream_path(path, self.settings.path_limits)?;
        sub.with_state(|state| {
            state.unlink_explicit(path);
            if !state.links.contains_key(path) {
                self.unindex(path, &sub);
            }
        });
        sub.persist(&self.store, false, vec![path.to_owned()]).await
    }

    /// A worker claims a pull-wake subscription (§7.2).
    pub async fn claim(&self, id: &str, body: &[u8]) -> Result<Value, SubscriptionError> {
        let sub = self.existing(id)?;
        if !matches!(sub.spec().delivery, Delivery::PullWake { .. }) {
            return Err(SubscriptionError::WrongType("claim", "pull-wake"));
        }
        let body: wire::ClaimBody = serde_json::from_slice(body)
            .map_err(|e| SubscriptionError::BadRequest(e.to_string()))?;
        if body.worker.is_empty() || body.worker.len() > wire::MAX_WORKER_BYTES {
            return Err(SubscriptionError::BadRequest(
                "worker must be 1 to 256 bytes".into(),
            ));
        }
        let lease = sub.spec().lease_ttl;
        let claimed = sub.with_state(|state| {
            state.claim(
                &body.worker,
                lease,
                now_ms(),
                |path| self.streams.tail(path),
                &mut new_secret,
            )
        });
        let handed = match claimed {
            Ok(wake) => wake,
            Err(state::ClaimError::AlreadyClaimed { holder, generation }) => {
                return Err(SubscriptionError::AlreadyClaimed { holder, generation });
            }
            Err(state::ClaimError::NothingPending) => {
                return Err(SubscriptionError::NothingPending);
            }
        };
        sub.persist(&self.store, true, Vec::new()).await?;
        // The driver sleeps until the deadline it saw last, and an unclaimed
        // wake has none: told, it wakes when this lease ends (§7.3).
        sub.notify.notify_one();
        Ok(wire::claim_view(&handed, sub.spec().lease_ttl_ms()))
    }

    /// A webhook callback (§7.1) or a pull-wake ack (§7.2): applies the
    /// acks of the current wake; with `done` the wake ends.
    pub async fn ack(
        &self,
        id: &str,
        token: &str,
        body: &[u8],
    ) -> Result<Value, SubscriptionError> {
        let sub = self.existing(id)?;
        let body: wire::AckBody = serde_json::from_slice(body)
            .map_err(|e| SubscriptionError::BadRequest(e.to_string()))?;
        let acks = body.offsets().map_err(SubscriptionError::BadRequest)?;
        let lease = sub.spec().lease_ttl;
        let now = now_ms();
        let outcome = sub.with_state(|state| {
            state.check(token, body.generation, &body.wake_id, now)?;
            state.ack(&acks, body.done, lease, now, |path| self.streams.tail(path))
        })?;
        let paths = acks.into_iter().map(|(path, _)| path).collect();
        sub.persist(&self.store, true, paths).await?;
        if outcome.released {
            sub.notify.notify_one();
        }
        Ok(json!({ "ok": true, "next_wake": outcome.next_wake }))
    }

    /// Ends the current wake without acking (§7.2).
    pub async fn release(
        &self,
        id: &str,
        token: &str,
        body: &[u8],
    ) -> Result<(), SubscriptionError> {
        let sub = self.existing(id)?;
        let body: wire::AckBody = serde_json::from_slice(body)
            .map_err(|e| SubscriptionError::BadRequest(e.to_string()))?;
        let now = now_ms();
        sub.with_state(|state| {
            state.check(token, body.generation, &body.wake_id, now)?;
            state.release();
            Ok::<_, state::AckError>(())
        })?;
        sub.persist(&self.store, true, Vec::new()).await?;
        sub.notify.notify_one();
        Ok(())
    }

    /// Links a new stream to the subscriptions whose pattern matches it.
    fn stream_created(&self, stream: &Arc<Stream>) {
        let path = &stream.path;
        let start = stream.visible().next;
        for entry in &self.by_id {
            let sub = entry.value();
            if sub.spec().pattern_matches(path) {
                sub.with_state(|state| {
                    state.link(path, LinkType::Glob, start);
                    self.index(path, sub);
                });
                sub.links_changed([path.clone()]);
            }
        }
    }

    fn stream_appended(&self, path: &str) {
        if let Some(subs) = self.by_stream.get(path) {
            for sub in subs.iter() {
                sub.poke(path);
            }
        }
    }

    fn stream_removed(&self, path: &str) {
        let Some(subs) = self.by_stream.get(path).map(|s| s.clone()) else {
            return;
        };
        for sub in subs {
            sub.with_state(|state| {
                if !state.stream_removed(path) {
                    self.unindex(path, &sub);
                }
            });
            sub.links_changed([path.to_owned()]);
        }
    }
}

/// How the stream registry tells the subscriptions what happened; weak, so
/// the two registries do not keep each other alive.
#[derive(Debug)]
struct Observer(Weak<Subscriptions>);

impl StreamObserver for Observer {
    fn created(&self, stream: &Arc<Stream>) {
        if let Some(registry) = self.0.upgrade() {
            registry.stream_created(stream);
        }
    }

    fn appended(&self, stream: &Arc<Stream>) {
        if let Some(registry) = self.0.upgrade() {
            registry.stream_appended(&stream.path);
        }
    }

    fn removed(&self, path: &str) {
        if let Some(registry) = self.0.upgrade() {
            registry.stream_removed(path);
        }
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, SubscriptionError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| SubscriptionError::Unavailable)?
        .map_err(SubscriptionError::from)
}

/// A wake id or bearer token: 144 random bits, URL-safe.
fn new_secret() -> String {
    let bytes: [u8; 18] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
