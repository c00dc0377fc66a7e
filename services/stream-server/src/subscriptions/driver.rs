//! The task each subscription runs while it exists: it persists links made
//! outside requests, ends leases that ran out, and when the subscription
//! is idle with pending work issues the next wake: a signed webhook POST
//! (§7.1) or a wake event appended to the wake stream (§7.2).
//!
//! It sleeps until poked (new data on a linked stream, a wake ended,
//! links to save) or until the next lease end or retry time, so an idle
//! subscription costs nothing.

use super::spec::Delivery;
use super::state::{HandedOut, Wake};
use super::subscription::Subscription;
use super::{SubscriptionError, Subscriptions, new_secret, now_ms, wire};
use crate::streams::AppendRequest;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn run(registry: Arc<Subscriptions>, sub: Arc<Subscription>) {
    loop {
        let again = match step(&registry, &sub).await {
            Ok(again) => again,
            Err(SubscriptionError::NotFound) => return,
            Err(error) => {
                tracing::error!(subscription = sub.id(), %error, "subscription step failed");
                false
            }
        };
        if again {
            continue;
        }
        let deadline = sub.with_state(|state| state.next_deadline_ms());
        let sleep = async {
            match deadline {
                Some(at) => {
                    let wait = at.saturating_sub(now_ms());
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sub.ended.cancelled() => return,
            () = sub.notify.notified() => {}
            () = sleep => {}
        }
    }
}

/// One round: save links, end a lease that ran out, issue a wake if one is
/// due. True if another round should follow at once.
async fn step(
    registry: &Subscriptions,
    sub: &Arc<Subscription>,
) -> Result<bool, SubscriptionError> {
    if sub.is_deleted() {
        return Err(SubscriptionError::NotFound);
    }
    let links: Vec<String> = sub.take_unsaved_links().into_iter().collect();
    let now = now_ms();
    let lease = sub.spec().lease_ttl;
    let streams = &registry.streams;
    let (expired, wake, first_pending) = sub.with_state(|state| {
        let expired = state.expire_lease(now);
        let wake = state.begin_wake(
            sub.mode(),
            lease,
            now,
            |path| streams.tail(path),
            &mut new_secret,
        );
        let first_pending = wake
            .as_ref()
            .and_then(|_| state.first_pending(|path| streams.tail(path)));
        (expired, wake, first_pending)
    });
    if expired {
        tracing::info!(subscription = sub.id(), "lease expired");
    }
    sub.persist(&registry.store, expired || wake.is_some(), links)
        .await?;
    let Some(handed) = wake else {
        return Ok(false);
    };
    match &sub.spec().delivery {
        Delivery::Webhook { url } => {
            deliver(registry, sub, url, &handed).await?;
            Ok(true)
        }
        Delivery::PullWake { wake_stream } => {
            let stream = first_pending.unwrap_or_default();
            write_wake_event(registry, sub, wake_stream, &stream, &handed.wake).await;
            Ok(false)
        }
    }
}

/// POSTs the wake to the webhook and applies the answer: done acks the
/// snapshot (§7.1), a failure schedules the retry.
async fn deliver(
    registry: &Subscriptions,
    sub: &Arc<Subscription>,
    url: &str,
    handed: &HandedOut,
) -> Result<(), SubscriptionError> {
    let wake = &handed.wake;
    let callback = registry.control_url(
        &registry.origin(),
        &format!("subscriptions/{}/callback", sub.id()),
    );
    let body = wire::webhook_body(sub.id(), handed, &callback).to_string();
    let signature = registry
        .signing
        .signature_header(now_ms() / 1000, body.as_bytes());
    let result = match registry.settings.policy.check(url) {
        Ok(checked) => registry
            .client
            .deliver(&checked, &signature, Bytes::from(body))
            .await
            .map_err(|e| e.to_string()),
        Err(rejected) => Err(rejected.to_string()),
    };
    match result {
        Ok(reply) => {
            sub.with_state(|state| state.webhook_delivered(&wake.id, reply.done));
            let acked = if reply.done {
                wake.snapshot.iter().map(|s| s.path.clone()).collect()
            } else {
                Vec::new()
            };
            sub.persist(&registry.store, true, acked).await
        }
        Err(error) => {
            let jitter = rand::random::<f64>() * 2.0 - 1.0;
            let retry = sub.with_state(|state| {
                state.webhook_failed(&wake.id, now_ms(), jitter);
                state.retry
            });
            tracing::warn!(
                subscription = sub.id(),
                generation = wake.generation,
                failures = retry.map_or(0, |r| r.failures),
                %error,
                "webhook delivery failed; retrying"
            );
            sub.persist(&registry.store, true, Vec::new()).await
        }
    }
}

/// Appends the wake event to the wake stream, which the application
/// created (§7.2). If it cannot, the wake still waits for a claim.
async fn write_wake_event(
    registry: &Subscriptions,
    sub: &Subscription,
    wake_stream: &str,
    stream: &str,
    wake: &Wake,
) {
    let content_type = match registry.streams.get(wake_stream, false) {
        Ok(target) => target.config.content_type.clone(),
        Err(error) => {
            tracing::warn!(subscription = sub.id(), wake_stream, %error, "cannot write the wake event");
            return;
        }
    };
    let event = wire::wake_event(sub.id(), stream, wake.generation, now_ms());
    let request = AppendRequest {
        content_type: Some(content_type),
        body: Bytes::from(event.to_string()),
        ..AppendRequest::default()
    };
    if let Err(error) = registry.streams.append(wake_stream, request).await {
        tracing::warn!(subscription = sub.id(), wake_stream, %error, "cannot write the wake event");
    }
}
