//! The acid engine's writer thread, which owns every write. It takes the
//! first waiting job, gathers every other job already queued (from any
//! stream), writes them all in one redb transaction with immediate
//! durability and commits once: concurrent requests share one fsync (group
//! commit). Small appends go to the filling recent table; each transaction
//! also settles a slice of the full one (see [`super::settle`]).

use super::io;
use super::rows::RECENT_PREFIX;
use super::settle::{self, Drain, SETTLE_BYTES, Step, Unsettled, UnsettledIndex};
use super::tables::{CHUNKS, PRODUCERS, RecentTable, STREAMS, StreamRecord};
use crate::protocol::producer::ProducerState;
use crate::storage::{Close, Commit, ProducerEntry, Reply, StorageError};
use crate::telemetry::GroupCommit;
use ::redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use std::collections::HashMap;
use std::sync::{Arc, mpsc};

/// Most requests folded into one transaction.
const MAX_GROUP: usize = 1024;
/// Appends this large go straight to `chunks`: they fill pages of their
/// own anyway, and would only be copied twice.
pub(super) const DIRECT_BYTES: usize = 16 * 1024;

/// A write for the writer thread, with where to report its outcome.
pub(super) struct Job {
    op: Op,
    reply: Reply,
}

/// One request's change, as the writer thread applies it.
pub(super) enum Op {
    Create {
        path: String,
        record: StreamRecord,
        /// Initial appends: end byte and `recent` value (see
        /// [`super::rows`]).
        chunks: Vec<(u64, Vec<u8>)>,
    },
    Apply {
        id: u64,
        path: String,
        unsettled: Arc<UnsettledIndex>,
        /// End byte and `recent` value of the appended data.
        chunk: Option<(u64, Vec<u8>)>,
        producer: Option<ProducerEntry>,
        stream_seq: Option<String>,
        close: Option<Close>,
    },
    SoftDelete {
        path: String,
    },
    Remove {
        id: u64,
        path: String,
        unsettled: Arc<UnsettledIndex>,
    },
}

/// Queues `op` on the writer thread behind `writer`; the commit resolves
/// once the transaction holding it has committed.
pub(super) fn submit(writer: &mpsc::Sender<Job>, op: Op) -> Result<Commit, StorageError> {
    let (reply, commit) = Commit::pending();
    writer
        .send(Job { op, reply })
        .map_err(|_| StorageError::Stopped)?;
    Ok(commit)
}

/// The writer thread: groups queued jobs into one durable transaction
/// each, switches recent tables when the filling one is full, and settles
/// the full one a step per transaction.
pub(super) struct Writer<'db> {
    db: &'db Database,
    settle_rows: usize,
    /// Key of the next recent row, in either table.
    next_seq: u64,
    /// The table small appends go to, and its first key.
    filling: RecentTable,
    filling_from: u64,
    /// Appends and bytes in the filling table.
    recent_rows: usize,
    recent_bytes: usize,
    /// The other table, while it is being settled.
    draining: Option<Drain>,
    /// The indexes of streams with appends in a recent table, by stream id.
    touched: HashMap<u64, Arc<UnsettledIndex>>,
}

/// What a group added to the filling table.
#[derive(Debug, Default)]
struct Filled {
    rows: usize,
    bytes: usize,
}

impl<'db> Writer<'db> {
    /// A writer for a database whose recent tables are empty (settled at
    /// open).
    pub(super) fn new(db: &'db Database, settle_rows: usize) -> Self {
        Writer {
            db,
            settle_rows,
            next_seq: 0,
            filling: RecentTable::A,
            filling_from: 0,
            recent_rows: 0,
            recent_bytes: 0,
            draining: None,
            touched: HashMap::new(),
        }
    }

    /// Serves jobs until every sender is gone.
    pub(super) fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let commit = GroupCommit::start(
                "redb commit",
                "acid",
                group.iter().map(|job| &job.reply.requester),
            );
            let outcome = self.commit_group(&group);
            commit.finish(outcome.is_ok());
            if let Err(e) = &outcome {
                tracing::error!(error = %e, requests = group.len(), "acid commit failed");
            }
            for job in group {
                job.reply.send(outcome.clone());
            }
        }
    }

    /// Commits `group` and then moves the writer's state on: the recent
    /// table switched to, what the group added to it, and how far the
    /// settle has come. On failure the state stays as it was.
    fn commit_group(&mut self, group: &[Job]) -> Result<(), StorageError> {
        let full = self.recent_rows >= self.settle_rows || self.recent_bytes >= SETTLE_BYTES;
        // A full table starts settling and appends switch to the other one,
        // unless that one is still settling: then the full one fills on.
        let switching = full && self.draining.is_none();
        let (filling, drain) = if switching {
            (self.filling.other(), Some(self.start_drain()))
        } else {
            (self.filling, self.draining.take())
        };
        let first_seq = self.next_seq;
        let (filled, moved) = match self.write_group(group, filling, drain.as_ref()) {
            Ok(done) => done,
            Err(e) => {
                // What the failed transaction wrote is gone: the state stays
                // as it was (keys it used are skipped; index entries for its
                // rows find nothing, and go with the next settle).
                if !switching {
                    self.draining = drain;
                }
                return Err(e);
            }
        };
        if switching {
            self.filling = filling;
            self.filling_from = first_seq;
            self.recent_rows = 0;
            self.recent_bytes = 0;
        }
        self.recent_rows += filled.rows;
        self.recent_bytes += filled.bytes;
        let Some(mut drain) = drain else {
            return Ok(());
        };
        drain.moved = moved;
        if drain.moved < drain.order.len() {
            self.draining = Some(drain);
            return Ok(());
        }
        // The table is settled and dropped: every key below its end is in
        // `chunks`.
        settle::forget_settled(&mut self.touched, drain.end);
        Ok(())
    }

    /// The filling table, as a table to settle.
    fn start_drain(&self) -> Drain {
        Drain::start(
            self.filling,
            self.filling_from,
            self.next_seq,
            self.recent_rows,
            &self.touched,
        )
    }

    /// Writes `group` in one durable transaction: first a slice of `drain`
    /// is settled, then every job is written, small appends into `filling`.
    /// Returns what the group added and how many of the drain's rows have
    /// moved.
    fn write_group(
        &mut self,
        group: &[Job],
        filling: RecentTable,
        drain: Option<&Drain>,
    ) -> Result<(Filled, usize), StorageError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(Durability::Immediate);
        let moved = match drain {
            Some(drain) => {
                settle::settle(&txn, drain, Step::alongside(drain, small_appends(group)))?
            }
            None => 0,
        };
        let filled = self.write_jobs(&txn, group, filling)?;
        txn.commit().map_err(io)?;
        Ok((filled, moved))
    }

    /// Writes every job of `group` into `txn`, in order; returns what they
    /// added to `filling`.
    fn write_jobs(
        &mut self,
        txn: &WriteTransaction,
        group: &[Job],
        filling: RecentTable,
    ) -> Result<Filled, StorageError> {
        let mut tables = GroupTables::open(txn, filling)?;
        for job in group {
            match &job.op {
                Op::Create {
                    path,
                    record,
                    chunks,
                } => tables.create_stream(path, record, chunks)?,
                Op::Apply {
                    id,
                    path,
                    unsettled,
                    chunk,
                    producer,
                    stream_seq,
                    close,
                } => {
                    if let Some((end, value)) = chunk {
                        self.write_chunk(&mut tables, *id, unsettled, *end, value)?;
                    }
                    if let Some(producer) = producer {
                        tables.put_producer(*id, &producer.id, producer.state)?;
                    }
                    if stream_seq.is_some() || close.is_some() {
                        tables.update_record(path, |record| {
                            if let Some(seq) = stream_seq {
                                record.last_seq = Some(seq.clone());
                            }
                            if let Some(close) = close {
                                record.closed = true;
                                record.closed_by = close.producer().cloned();
                            }
                        })?;
                    }
                }
                Op::SoftDelete { path } => {
                    tables.update_record(path, |record| record.soft_deleted = true)?;
                }
                Op::Remove {
                    id,
                    path,
                    unsettled,
                } => tables.remove_stream(*id, path, unsettled)?,
            }
        }
        Ok(tables.filled)
    }

    /// Writes one append of stream `id` ending at byte `end` (`value` is
    /// its `recent` row): a large one straight to `chunks`; a small one to
    /// the filling table under the next key, listed in the stream's
    /// `unsettled` index before the commit (see [`UnsettledIndex`]).
    fn write_chunk(
        &mut self,
        tables: &mut GroupTables<'_>,
        id: u64,
        unsettled: &Arc<UnsettledIndex>,
        end: u64,
        value: &[u8],
    ) -> Result<(), StorageError> {
        if value.len() >= DIRECT_BYTES {
            tables
                .chunks
                .insert((id, end), &value[RECENT_PREFIX..])
                .map_err(io)?;
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        tables.recent.insert(seq, value).map_err(io)?;
        tables.filled.rows += 1;
        tables.filled.bytes += value.len();
        unsettled.lock().push_back(Unsettled {
            end,
            seq,
            table: tables.filling,
        });
        self.touched
            .entry(id)
            .or_insert_with(|| Arc::clone(unsettled));
        Ok(())
    }
}

/// Rows and bytes of the small appends (those that go to a recent table)
/// in `group`.
fn small_appends(group: &[Job]) -> (usize, usize) {
    group
        .iter()
        .filter_map(|job| match &job.op {
            Op::Apply {
                chunk: Some((_, value)),
                ..
            } if value.len() < DIRECT_BYTES => Some(value.len()),
            _ => None,
        })
        .fold((0, 0), |(rows, bytes), len| (rows + 1, bytes + len))
}

/// The tables a group writes, open for the length of its transaction, and
/// what it has added to the filling recent table so far.
///
/// The tables are opened in the order `streams`, `chunks`, `recent`,
/// `producers`, and declared in reverse so they close (drop) in reverse,
/// as locals of one scope would.
struct GroupTables<'txn> {
    txn: &'txn WriteTransaction,
    producers: Table<'txn, (u64, &'static str), (u64, u64)>,
    /// The filling recent table.
    recent: Table<'txn, u64, &'static [u8]>,
    chunks: Table<'txn, (u64, u64), &'static [u8]>,
    streams: Table<'txn, &'static str, &'static [u8]>,
    filling: RecentTable,
    filled: Filled,
}

impl<'txn> GroupTables<'txn> {
    fn open(txn: &'txn WriteTransaction, filling: RecentTable) -> Result<Self, StorageError> {
        Ok(GroupTables {
            txn,
            streams: txn.open_table(STREAMS).map_err(io)?,
            chunks: txn.open_table(CHUNKS).map_err(io)?,
            recent: txn.open_table(filling.definition()).map_err(io)?,
            producers: txn.open_table(PRODUCERS).map_err(io)?,
            filling,
            filled: Filled::default(),
        })
    }

    /// The `streams` row of `path`.
    fn load(&self, path: &str) -> Result<StreamRecord, StorageError> {
        let value = self
            .streams
            .get(path)
            .map_err(io)?
            .ok_or_else(|| StorageError::Corrupt(format!("stream {path} has no record")))?;
        serde_json::from_slice(value.value()).map_err(io)
    }

    /// Writes the `streams` row of `path`.
    fn store(&mut self, path: &str, record: &StreamRecord) -> Result<(), StorageError> {
        let encoded = serde_json::to_vec(record).map_err(io)?;
        self.streams.insert(path, encoded.as_slice()).map_err(io)?;
        Ok(())
    }

    /// Rewrites the `streams` row of `path` with `change` made to it.
    fn update_record(
        &mut self,
        path: &str,
        change: impl FnOnce(&mut StreamRecord),
    ) -> Result<(), StorageError> {
        let mut record = self.load(path)?;
        change(&mut record);
        self.store(path, &record)
    }

    /// A new stream's row and its initial appends, straight to `chunks`.
    fn create_stream(
        &mut self,
        path: &str,
        record: &StreamRecord,
        initial: &[(u64, Vec<u8>)],
    ) -> Result<(), StorageError> {
        self.store(path, record)?;
        for (end, value) in initial {
            self.chunks
                .insert((record.id, *end), &value[RECENT_PREFIX..])
                .map_err(io)?;
        }
        Ok(())
    }

    /// Stores the state of `producer` on stream `id`.
    fn put_producer(
        &mut self,
        id: u64,
        producer: &str,
        state: ProducerState,
    ) -> Result<(), StorageError> {
        self.producers
            .insert((id, producer), (state.epoch, state.last_seq))
            .map_err(io)?;
        Ok(())
    }

    /// Removes stream `id`: its row (only if `path` still names it: the
    /// path may have been re-created since), its chunks, its appends in
    /// either recent table, and its producers.
    fn remove_stream(
        &mut self,
        id: u64,
        path: &str,
        unsettled: &UnsettledIndex,
    ) -> Result<(), StorageError> {
        if self.load(path).is_ok_and(|r| r.id == id) {
            self.streams.remove(path).map_err(io)?;
        }
        self.chunks
            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
            .map_err(io)?;
        let mut settling = Vec::new();
        for entry in unsettled.lock().iter() {
            if entry.table == self.filling {
                self.recent.remove(entry.seq).map_err(io)?;
            } else {
                settling.push(entry.seq);
            }
        }
        // The other table is opened only here: a group without removals
        // never needs it.
        if !settling.is_empty() {
            let mut other = self
                .txn
                .open_table(self.filling.other().definition())
                .map_err(io)?;
            for seq in settling {
                other.remove(seq).map_err(io)?;
            }
        }
        self.producers
            .retain_in((id, "")..(id + 1, ""), |_, _| false)
            .map_err(io)?;
        Ok(())
    }
}
