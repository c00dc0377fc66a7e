//! Persistence of subscriptions: what must survive a restart of the server
//! (§6–7) — each subscription's spec, its cursors, its wake cycle and its
//! webhook retry schedule, which §7.1 requires to outlive the process.
//!
//! One redb database serves every storage mode: `<data dir>/subscriptions.redb`
//! in the persistent modes, redb's in-memory backend in `memory` mode. The
//! in-memory [`State`] is the truth while the server runs; the store is
//! written after each transition and read once, at start.
//!
//! Tables, each row one subscription's or one link's:
//! * `subscriptions`: id → JSON [`Record`] (the spec, its hash, the creation
//!   time), written once, when the subscription is created. The spec is
//!   stored as its canonical JSON.
//! * `cycles`: id → JSON generation, current wake (without its snapshot,
//!   and with the SHA-256 of its bearer token rather than the token) and
//!   retry schedule: the small part that changes with every wake.
//! * `links`: (id, stream path) → one flags byte and the acknowledged
//!   offset as its 33-character token.
//! * `meta`: `format` → the version of this layout.
//!
//! The spec and the wake cycle are apart, and each link is a row of its
//! own, so that the common transitions write little: an ack rewrites the
//! acked streams' rows and the small cycle row, never a spec that may name
//! a thousand streams nor the other links of a subscription. redb copies
//! every B-tree page a transaction changes, so the rows a transaction does
//! not touch cost nothing.
//!
//! A wake's snapshot is not stored: it serves the webhook request or claim
//! response that carried it, and neither outlives the process. After a
//! restart a held wake still fences and accepts its token until its lease
//! ends; a webhook's `{"done": true}` can no longer arrive for it.
//!
//! Deleting a subscription removes its rows (§6.3's tombstone is the
//! absence: requests for the id fail, and [`SubscriptionStore::save`]
//! refuses to write for it). The id may then be created again, from
//! generation zero: a request of the old subscription is still fenced by
//! its wake id and token, which are never reused.
//!
//! Every method runs one redb transaction and blocks on disk I/O (a commit
//! waits for its fsync): call them from `spawn_blocking` or a thread of
//! their own. redb runs one write transaction at a time, so concurrent
//! writes wait for each other; reads do not wait. Writes for one
//! subscription must be made in the order of its transitions, which is the
//! caller's to keep (its per-subscription lock).

use super::spec::Spec;
use super::state::{Link, Retry, State, TokenDigest, Wake};
use crate::protocol::offset::Offset;
use redb::backends::InMemoryBackend;
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::path::Path;

/// The database file in the data directory.
pub const DB_FILE: &str = "subscriptions.redb";

/// Largest JSON row written. Far above the largest spec a request can
/// produce under the default path limits; it bounds what one raised limit
/// or a bug could make the store write and the next start read.
pub const MAX_ROW_BYTES: usize = 4 << 20;

const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("subscriptions");
const CYCLES: TableDefinition<&str, &[u8]> = TableDefinition::new("cycles");
const LINKS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("links");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The layout above, in `meta.format`: a database of another format is
/// refused at open, before any row is read.
const FORMAT: u64 = 1;
/// The `v` of the JSON rows this code writes and reads.
const ROW_VERSION: u64 = 1;

/// The store is read whole once and then written a few pages at a time:
/// a large page cache would buy nothing.
const CACHE_BYTES: usize = 16 << 20;

/// `links` value flags.
const EXPLICIT: u8 = 1;
const GLOB: u8 = 2;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Boxed: redb's error is large, and every result here carries one.
    #[error("subscription store: {0}")]
    Redb(Box<redb::Error>),
    #[error("cannot create the subscription store's directory {dir}: {source}")]
    CreateDir { dir: String, source: std::io::Error },
    #[error(
        "the subscription store is in format {found}; this server reads format {known} only \
         (was it written by a newer server?)"
    )]
    Format { found: u64, known: u64 },
    #[error(
        "subscription {id:?} is stored in row version {found}; this server reads version {known} \
         only (was it written by a newer server?)"
    )]
    NewerRow { id: String, found: u64, known: u64 },
    #[error("subscription {id:?} is stored corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("subscription {id:?} would take {bytes} bytes to store, more than {max}")]
    TooLarge {
        id: String,
        bytes: usize,
        max: usize,
    },
    #[error("subscription {0:?} is already stored")]
    Exists(String),
    #[error("subscription {0:?} is not stored")]
    NotFound(String),
}

/// redb reports each step's failure as its own type; all are storage
/// failures here.
macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> Self {
                StoreError::Redb(Box::new(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

fn corrupt(id: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_owned(),
        reason: reason.to_string(),
    }
}

/// What is stored of a subscription besides its [`State`]: fixed when it
/// is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub spec: Spec,
    /// [`Spec::hash`] at creation: what a repeated `PUT` is compared with.
    pub hash: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
}

impl Record {
    pub fn new(id: String, spec: Spec, created_at_ms: u64) -> Record {
        let hash = spec.hash();
        Record {
            id,
            spec,
            hash,
            created_at_ms,
        }
    }
}

/// Which parts of a subscription's [`State`] one write stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes<'a> {
    /// The generation, the wake or the retry changed.
    pub cycle: bool,
    /// Streams whose link was added, changed or removed: each is written
    /// as the state has it, or deleted when the state no longer links it.
    pub links: Vec<&'a str>,
}

impl<'a> Changes<'a> {
    /// The generation, wake or retry changed, no link did.
    pub fn cycle() -> Self {
        Changes {
            cycle: true,
            links: Vec::new(),
        }
    }

    /// These links changed, nothing else.
    pub fn links(paths: impl IntoIterator<Item = &'a str>) -> Self {
        Changes {
            cycle: false,
            links: paths.into_iter().collect(),
        }
    }

    /// The cycle changed too.
    pub fn and_cycle(mut self) -> Self {
        self.cycle = true;
        self
    }
}

/// A `subscriptions` row.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionRow {
    v: u64,
    /// [`Spec::canonical_json`], nested as it is.
    spec: Box<RawValue>,
    hash: String,
    created_at_ms: u64,
}

/// A `cycles` row.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CycleRow {
    v: u64,
    generation: u64,
    wake: Option<WakeRow>,
    retry: Option<RetryRow>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WakeRow {
    id: String,
    generation: u64,
    /// The hex SHA-256 of the wake's bearer token.
    token_sha256: Option<String>,
    holder: Option<String>,
    lease_until_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRow {
    failures: u32,
    next_attempt_ms: u64,
}

/// The version every JSON row carries, read before the rest so that a
/// newer row is named as such rather than as corrupt.
#[derive(Deserialize)]
struct Version {
    v: u64,
}

impl CycleRow {
    fn of(state: &State) -> CycleRow {
        CycleRow {
            v: ROW_VERSION,
            generation: state.generation,
            wake: state.wake.as_ref().map(|w| WakeRow {
                id: w.id.clone(),
                generation: w.generation,
                token_sha256: w.token.as_ref().map(TokenDigest::to_hex),
                holder: w.holder.clone(),
                lease_until_ms: w.lease_until_ms,
            }),
            retry: state.retry.map(|r| RetryRow {
                failures: r.failures,
                next_attempt_ms: r.next_attempt_ms,
            }),
        }
    }

    /// Sets `state`'s generation, wake and retry from this row.
    fn restore(self, id: &str, state: &mut State) -> Result<(), StoreError> {
        state.generation = self.generation;
        state.wake = match self.wake {
            None => None,
            Some(w) => {
                let token = match w.token_sha256 {
                    Some(hex) => Some(TokenDigest::from_hex(&hex).ok_or_else(|| {
                        corrupt(id, "the wake's token digest is not hex SHA-256")
                    })?),
                    None => None,
                };
                Some(Wake {
                    id: w.id,
                    generation: w.generation,
                    token,
                    holder: w.holder,
                    lease_until_ms: w.lease_until_ms,
                    snapshot: Vec::new(),
                })
            }
        };
        state.retry = self.retry.map(|r| Retry {
            failures: r.failures,
            next_attempt_ms: r.next_attempt_ms,
        });
        Ok(())
    }
}

/// Serialises a JSON row of subscription `id`, refusing one too large.
fn encode_row(id: &str, row: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    let bytes = serde_json::to_vec(row).map_err(|e| corrupt(id, e))?;
    if bytes.len() > MAX_ROW_BYTES {
        return Err(StoreError::TooLarge {
            id: id.to_owned(),
            bytes: bytes.len(),
            max: MAX_ROW_BYTES,
        });
    }
    Ok(bytes)
}

/// Parses a JSON row of subscription `id` (`what` names the table).
fn decode_row<T: DeserializeOwned>(id: &str, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let Version { v } =
        serde_json::from_slice(bytes).map_err(|e| corrupt(id, format!("{what} row: {e}")))?;
    if v > ROW_VERSION {
        return Err(StoreError::NewerRow {
            id: id.to_owned(),
            found: v,
            known: ROW_VERSION,
        });
    }
    if v != ROW_VERSION {
        return Err(corrupt(id, format!("{what} row has unknown version {v}")));
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(id, format!("{what} row: {e}")))
}

fn encode_link(link: &Link) -> Vec<u8> {
    let flags = if link.explicit { EXPLICIT } else { 0 } | if link.glob { GLOB } else { 0 };
    let offset = link.acked.encode();
    let mut value = Vec::with_capacity(1 + offset.len());
    value.push(flags);
    value.extend_from_slice(&offset);
    value
}

fn decode_link(value: &[u8]) -> Result<Link, String> {
    let (&flags, offset) = value.split_first().ok_or("the link row is empty")?;
    if flags & !(EXPLICIT | GLOB) != 0 || flags == 0 {
        return Err(format!("the link row has flags {flags:#04x}"));
    }
    let acked = std::str::from_utf8(offset)
        .ok()
        .and_then(|s| s.parse::<Offset>().ok())
        .ok_or("the link row's offset is malformed")?;
    Ok(Link {
        explicit: flags & EXPLICIT != 0,
        glob: flags & GLOB != 0,
        acked,
    })
}

/// The subscription store: one redb database.
#[derive(Debug)]
pub struct SubscriptionStore {
    db: Database,
}

impl SubscriptionStore {
    /// Opens (or creates) `dir/subscriptions.redb`, or with `None` a
    /// database in memory. Refuses a database of another format.
    ///
    /// In a persistent mode, open the storage engine first: the engines
    /// refuse to initialise a directory that already holds files, and this
    /// one would be such a file.
    pub fn open(dir: Option<&Path>) -> Result<SubscriptionStore, StoreError> {
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        let db = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                    dir: dir.display().to_string(),
                    source,
                })?;
                builder.create(dir.join(DB_FILE))?
            }
            None => builder.create_with_backend(InMemoryBackend::new())?,
        };
        let store = SubscriptionStore { db };
        let txn = store.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("format")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("format", FORMAT)?;
                }
                Some(FORMAT) => {}
                Some(found) => {
                    return Err(StoreError::Format {
                        found,
                        known: FORMAT,
                    });
                }
            }
            // Reads open every table; they exist from the start.
            txn.open_table(SUBSCRIPTIONS)?;
            txn.open_table(CYCLES)?;
            txn.open_table(LINKS)?;
        }
        txn.commit()?;
        Ok(store)
    }

    /// Stores a new subscription: its record, its cycle and every link of
    /// `state`. Refuses an id that is stored already.
    pub fn create(&self, record: &Record, state: &State) -> Result<(), StoreError> {
        let id = record.id.as_str();
        let spec =
            RawValue::from_string(record.spec.canonical_json()).map_err(|e| corrupt(id, e))?;
        let row = encode_row(
            id,
            &SubscriptionRow {
                v: ROW_VERSION,
                spec,
                hash: record.hash.clone(),
                created_at_ms: record.created_at_ms,
            },
        )?;
        let cycle = encode_row(id, &CycleRow::of(state))?;
        let txn = self.begin_write()?;
        {
            let mut subscriptions = txn.open_table(SUBSCRIPTIONS)?;
            if subscriptions.get(id)?.is_some() {
                return Err(StoreError::Exists(id.to_owned()));
            }
            subscriptions.insert(id, row.as_slice())?;
            txn.open_table(CYCLES)?.insert(id, cycle.as_slice())?;
            let mut links = txn.open_table(LINKS)?;
            for (path, link) in &state.links {
                links.insert((id, path.as_str()), encode_link(link).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes the parts of subscription `id`'s `state` named by `changes`.
    /// Refuses an id that is not stored (deleted meanwhile: §6.3 says its
    /// requests must not move cursors), writing nothing.
    pub fn save(&self, id: &str, state: &State, changes: &Changes<'_>) -> Result<(), StoreError> {
        self.save_many(&[(id, state, changes)])
    }

    /// [`save`](Self::save) for several subscriptions in one transaction
    /// (one commit, one fsync): say, a new stream linked to every
    /// subscription whose pattern it matches. All or nothing: one id that
    /// is not stored refuses the whole.
    pub fn save_many(&self, saves: &[(&str, &State, &Changes<'_>)]) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let subscriptions = txn.open_table(SUBSCRIPTIONS)?;
            let mut cycles = txn.open_table(CYCLES)?;
            let mut links = txn.open_table(LINKS)?;
            for &(id, state, changes) in saves {
                if subscriptions.get(id)?.is_none() {
                    return Err(StoreError::NotFound(id.to_owned()));
                }
                if changes.cycle {
                    cycles.insert(id, encode_row(id, &CycleRow::of(state))?.as_slice())?;
                }
                for &path in &changes.links {
                    match state.links.get(path) {
                        Some(link) => {
                            links.insert((id, path), encode_link(link).as_slice())?;
                        }
                        None => {
                            links.remove((id, path))?;
                        }
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes subscription `id` and all its links; false if it was not
    /// stored.
    pub fn remove(&self, id: &str) -> Result<bool, StoreError> {
        // `id` followed by NUL is the least string above `id`, so this
        // range holds every (id, path) key and no other.
        let above = format!("{id}\0");
        let txn = self.begin_write()?;
        let existed = {
            let existed = txn.open_table(SUBSCRIPTIONS)?.remove(id)?.is_some();
            txn.open_table(CYCLES)?.remove(id)?;
            txn.open_table(LINKS)?
                .retain_in((id, "")..(above.as_str(), ""), |_, _| false)?;
            existed
        };
        txn.commit()?;
        Ok(existed)
    }

    /// Every stored subscription with its state (wakes without snapshots),
    /// in id order. A row that does not decode, or one that belongs to no
    /// subscription, is an error naming the subscription.
    pub fn load_all(&self) -> Result<Vec<(Record, State)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut loaded: BTreeMap<String, (Record, State, bool)> = BTreeMap::new();
        for row in txn.open_table(SUBSCRIPTIONS)?.iter()? {
            let (key, value) = row?;
            let id = key.value();
            let row: SubscriptionRow = decode_row(id, "subscription", value.value())?;
            let spec = Spec::from_canonical_json(row.spec.get())
                .map_err(|e| corrupt(id, format!("spec: {e}")))?;
            if spec.hash() != row.hash {
                return Err(corrupt(id, "the spec does not match its hash"));
            }
            let record = Record {
                id: id.to_owned(),
                spec,
                hash: row.hash,
                created_at_ms: row.created_at_ms,
            };
            loaded.insert(id.to_owned(), (record, State::default(), false));
        }
        for row in txn.open_table(CYCLES)?.iter()? {
            let (key, value) = row?;
            let id = key.value();
            let (_, state, has_cycle) = loaded
                .get_mut(id)
                .ok_or_else(|| corrupt(id, "wake state without a subscription"))?;
            decode_row::<CycleRow>(id, "cycle", value.value())?.restore(id, state)?;
            *has_cycle = true;
        }
        for row in txn.open_table(LINKS)?.iter()? {
            let (key, value) = row?;
            let (id, path) = key.value();
            let (_, state, _) = loaded
                .get_mut(id)
                .ok_or_else(|| corrupt(id, format!("link to {path:?} without a subscription")))?;
            let link =
                decode_link(value.value()).map_err(|e| corrupt(id, format!("{path:?}: {e}")))?;
            state.restore_link(path, link);
        }
        loaded
            .into_iter()
            .map(|(id, (record, state, has_cycle))| {
                if has_cycle {
                    Ok((record, state))
                } else {
                    Err(corrupt(&id, "no wake state is stored"))
                }
            })
            .collect()
    }

    /// A write transaction that is durable once committed: an ack, a delete
    /// or a retry schedule the server has answered for must survive a
    /// crash, or a worker's processed data would be handed out again, a
    /// deleted subscription come back, and a failing webhook be retried at
    /// once. On the in-memory backend the sync does nothing, so `memory`
    /// mode takes the same path.
    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }

    /// Rows in `links`, for tests.
    #[cfg(test)]
    fn link_rows(&self) -> u64 {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read().unwrap();
        txn.open_table(LINKS).unwrap().len().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::state::LinkType;
    use service_common::stream_path::PathLimits;

    fn off(n: u64) -> Offset {
        Offset::new(n, n * 10)
    }

    fn record(id: &str) -> Record {
        let spec = Spec::parse(
            br#"{"type":"webhook","pattern":"events/*","streams":["manual/a"],"webhook":{"url":"https://w.example/h"},"lease_ttl_ms":5000,"description":"d"}"#,
            PathLimits::default(),
        )
        .unwrap();
        Record::new(id.to_owned(), spec, 1_778_324_210_000)
    }

    /// A state with links, a held wake and a retry scheduled.
    fn busy_state() -> State {
        let mut state = State::default();
        state.link("events/a", LinkType::Glob, off(1));
        state.link("manual/a", LinkType::Explicit, off(2));
        state.link("manual/a", LinkType::Glob, off(9));
        state.generation = 7;
        state.wake = Some(Wake {
            id: "w_7".into(),
            generation: 7,
            token: Some(TokenDigest::of("secret")),
            holder: Some("worker-1".into()),
            lease_until_ms: Some(1_778_324_240_000),
            snapshot: Vec::new(),
        });
        state.retry = Some(Retry {
            failures: 3,
            next_attempt_ms: 1_778_324_250_000,
        });
        state
    }

    fn put_raw(store: &SubscriptionStore, table: TableDefinition<&str, &[u8]>, id: &str, v: &[u8]) {
        let txn = store.db.begin_write().unwrap();
        txn.open_table(table).unwrap().insert(id, v).unwrap();
        txn.commit().unwrap();
    }

    fn put_raw_link(store: &SubscriptionStore, id: &str, path: &str, v: &[u8]) {
        let txn = store.db.begin_write().unwrap();
        txn.open_table(LINKS)
            .unwrap()
            .insert((id, path), v)
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_subscription_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = busy_state();
        {
            let store = SubscriptionStore::open(Some(dir.path())).unwrap();
            store.create(&record("sub-1"), &state).unwrap();
            store.create(&record("sub-2"), &State::default()).unwrap();
        }
        assert!(dir.path().join(DB_FILE).exists());
        let store = SubscriptionStore::open(Some(dir.path())).unwrap();
        let loaded = store.load_all().unwrap();
        assert_eq!(loaded.len(), 2);
        let (rec, back) = &loaded[0];
        assert_eq!(rec, &record("sub-1"));
        assert_eq!(back, &state);
        assert_eq!(back.links["manual/a"].link_type(), LinkType::Explicit);
        assert!(back.links["manual/a"].glob);
        assert_eq!(loaded[1].0.id, "sub-2");
        assert_eq!(loaded[1].1, State::default());
    }

    #[test]
    fn wake_tokens_are_stored_as_digests_only() {
        let dir = tempfile::tempdir().unwrap();
        let token = "wake-token-Zq81xT0pLr";
        let mut state = busy_state();
        if let Some(wake) = &mut state.wake {
            wake.token = Some(TokenDigest::of(token));
        }
        {
            let store = SubscriptionStore::open(Some(dir.path())).unwrap();
            store.create(&record("s"), &state).unwrap();
        }
        let file = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        let contains = |needle: &[u8]| file.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(token.as_bytes()), "the token is in the file");
        assert!(contains(TokenDigest::of(token).to_hex().as_bytes()));
        let store = SubscriptionStore::open(Some(dir.path())).unwrap();
        let (_, back) = &store.load_all().unwrap()[0];
        let digest = back.wake.as_ref().and_then(|w| w.token.as_ref()).unwrap();
        assert!(digest.matches(token));
        assert!(!digest.matches("wake-token-Zq81xT0pLs"));
    }

    #[test]
    fn an_ack_rewrites_only_the_rows_it_names() {
        let store = SubscriptionStore::open(None).unwrap();
        let mut state = busy_state();
        store.create(&record("s"), &state).unwrap();
        assert_eq!(store.link_rows(), 2);

        // Both cursors and the generation move in memory; only one link
        // is saved.
        state.links.get_mut("events/a").unwrap().acked = off(5);
        state.links.get_mut("manual/a").unwrap().acked = off(6);
        state.generation = 8;
        store
            .save("s", &state, &Changes::links(["events/a"]))
            .unwrap();
        let (_, back) = &store.load_all().unwrap()[0];
        assert_eq!(back.links["events/a"].acked, off(5));
        assert_eq!(
            back.links["manual/a"].acked,
            off(2),
            "not named, not written"
        );
        assert_eq!(back.generation, 7, "the cycle was not named");
        assert_eq!(store.link_rows(), 2);

        // The cycle alone.
        state.wake = None;
        state.retry = None;
        store.save("s", &state, &Changes::cycle()).unwrap();
        let (_, back) = &store.load_all().unwrap()[0];
        assert_eq!((back.generation, &back.wake, back.retry), (8, &None, None));
        assert_eq!(back.links["manual/a"].acked, off(2));

        // A link the state no longer has is deleted, a new one added.
        state.unlink("events/a");
        state.link("events/b", LinkType::Glob, off(3));
        store
            .save(
                "s",
                &state,
                &Changes::links(["events/a", "events/b"]).and_cycle(),
            )
            .unwrap();
        let (_, back) = &store.load_all().unwrap()[0];
        assert!(!back.links.contains_key("events/a"));
        assert_eq!(back.links["events/b"].acked, off(3));
        assert_eq!(store.link_rows(), 2);
    }

    #[test]
    fn saving_many_is_all_or_nothing() {
        let store = SubscriptionStore::open(None).unwrap();
        store.create(&record("a"), &State::default()).unwrap();
        let mut state = State::default();
        state.link("events/new", LinkType::Glob, off(0));
        let changes = Changes::links(["events/new"]);
        let refused = store.save_many(&[("a", &state, &changes), ("gone", &state, &changes)]);
        assert!(matches!(refused, Err(StoreError::NotFound(id)) if id == "gone"));
        assert_eq!(store.link_rows(), 0, "nothing written");
        store.save_many(&[("a", &state, &changes)]).unwrap();
        assert_eq!(store.link_rows(), 1);
    }

    #[test]
    fn removal_takes_the_links_and_the_id_can_return() {
        let store = SubscriptionStore::open(None).unwrap();
        store.create(&record("s"), &busy_state()).unwrap();
        // Ids that sort next to "s" keep their links.
        store.create(&record("s-"), &busy_state()).unwrap();
        store.create(&record("r"), &busy_state()).unwrap();
        assert_eq!(store.link_rows(), 6);
        assert!(store.remove("s").unwrap());
        assert_eq!(store.link_rows(), 4);
        assert!(!store.remove("s").unwrap());
        let ids: Vec<_> = store
            .load_all()
            .unwrap()
            .into_iter()
            .map(|(r, _)| r.id)
            .collect();
        assert_eq!(ids, ["r", "s-"]);
        // A late write for the deleted subscription is refused.
        assert!(matches!(
            store.save(
                "s",
                &busy_state(),
                &Changes::links(["events/a"]).and_cycle()
            ),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.link_rows(), 4);
        store.create(&record("s"), &State::default()).unwrap();
        let loaded = store.load_all().unwrap();
        let (_, state) = loaded.iter().find(|(r, _)| r.id == "s").unwrap();
        assert_eq!(state, &State::default());
    }

    #[test]
    fn creating_a_stored_id_is_refused() {
        let store = SubscriptionStore::open(None).unwrap();
        store.create(&record("s"), &busy_state()).unwrap();
        assert!(matches!(
            store.create(&record("s"), &State::default()),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(store.load_all().unwrap()[0].1, busy_state());
    }

    #[test]
    fn an_oversized_record_is_refused_and_nothing_stored() {
        let store = SubscriptionStore::open(None).unwrap();
        let mut big = record("big");
        let path = "x".repeat(1000);
        big.spec.streams = (0..MAX_ROW_BYTES / 1000)
            .map(|i| format!("{i}/{path}"))
            .collect();
        assert!(matches!(
            store.create(&big, &State::default()),
            Err(StoreError::TooLarge { id, .. }) if id == "big"
        ));
        assert!(store.load_all().unwrap().is_empty());
    }

    #[test]
    fn corrupt_rows_are_errors_naming_the_subscription() {
        type Corruption = (&'static str, fn(&SubscriptionStore));
        let corruptions: [Corruption; 8] = [
            ("not json", |s| put_raw(s, SUBSCRIPTIONS, "s", b"{")),
            ("bad spec", |s| {
                put_raw(
                    s,
                    SUBSCRIPTIONS,
                    "s",
                    br#"{"v":1,"spec":{"type":"x"},"hash":"h","created_at_ms":0}"#,
                )
            }),
            ("bad cycle", |s| put_raw(s, CYCLES, "s", br#"{"v":1}"#)),
            ("cycle of nobody", |s| {
                let row = serde_json::to_vec(&CycleRow::of(&State::default())).unwrap();
                put_raw(s, CYCLES, "nobody", &row)
            }),
            ("bad token digest", |s| {
                put_raw(
                    s,
                    CYCLES,
                    "s",
                    br#"{"v":1,"generation":1,"wake":{"id":"w","generation":1,"token_sha256":"zz","holder":null,"lease_until_ms":null},"retry":null}"#,
                )
            }),
            ("bad flags", |s| {
                put_raw_link(s, "s", "events/a", &[4, b'0'])
            }),
            ("bad offset", |s| {
                put_raw_link(s, "s", "events/a", b"\x01000000000000000Z_0000000000000000")
            }),
            ("link of nobody", |s| {
                put_raw_link(
                    s,
                    "nobody",
                    "events/a",
                    &encode_link(&busy_state().links["events/a"]),
                )
            }),
        ];
        for (what, corrupt) in corruptions {
            let store = SubscriptionStore::open(None).unwrap();
            store.create(&record("s"), &busy_state()).unwrap();
            corrupt(&store);
            let err = store.load_all().expect_err(what);
            let StoreError::Corrupt { id, .. } = &err else {
                panic!("{what}: {err}");
            };
            let expected = if what.ends_with("nobody") {
                "nobody"
            } else {
                "s"
            };
            assert_eq!(id, expected, "{what}");
            assert!(err.to_string().contains(expected), "{what}: {err}");
        }
        // A subscription whose cycle row is missing.
        let store = SubscriptionStore::open(None).unwrap();
        store.create(&record("s"), &busy_state()).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(CYCLES).unwrap().remove("s").unwrap();
        txn.commit().unwrap();
        assert!(matches!(store.load_all(), Err(StoreError::Corrupt { id, .. }) if id == "s"));
    }

    #[test]
    fn a_newer_format_or_row_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SubscriptionStore::open(Some(dir.path())).unwrap();
            store.create(&record("s"), &busy_state()).unwrap();
            put_raw(
                &store,
                SUBSCRIPTIONS,
                "s",
                br#"{"v":2,"spec":"anything","new_field":true}"#,
            );
            let err = store.load_all().unwrap_err();
            assert!(
                matches!(&err, StoreError::NewerRow { id, found: 2, known: 1 } if id == "s"),
                "{err}"
            );
            assert!(err.to_string().contains("newer server"));
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", FORMAT + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = SubscriptionStore::open(Some(dir.path())).unwrap_err();
        assert!(
            matches!(err, StoreError::Format { found, known } if found == FORMAT + 1 && known == FORMAT)
        );
        assert!(err.to_string().contains("newer server"), "{err}");
    }

    #[test]
    fn links_encode_as_flags_and_the_offset_token() {
        let link = Link {
            explicit: true,
            glob: true,
            acked: Offset::new(1, 11),
        };
        let value = encode_link(&link);
        assert_eq!(&value[..], b"\x030000000000000001_000000000000000b");
        assert_eq!(decode_link(&value), Ok(link));
        assert!(decode_link(&[]).is_err());
        assert!(decode_link(&value[..value.len() - 1]).is_err());
    }
}
