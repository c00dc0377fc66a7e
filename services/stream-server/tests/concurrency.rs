//! Concurrency (PROTOCOL.md §4 ordering, §8 offsets, §5.2.1 serialisation):
//! many writers on one stream get unique, strictly ordered offsets and every
//! append lands exactly once and intact; readers during appends only ever
//! see prefixes of the final data; racing creates yield one 201; racing
//! producer retries are deduplicated.

mod common;

use common::{TestServer, body, header, next_offset, send};
use reqwest::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const WRITERS: usize = 32;
const APPENDS_PER_WRITER: usize = 50;
/// Every payload is `wWW-NNN;`: fixed length, unique, self-describing.
const RECORD: usize = 9;

fn payload(writer: usize, n: usize) -> String {
    let record = format!("w{writer:02}-{n:04};");
    assert_eq!(record.len(), RECORD);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_unique_ordered_and_intact() {
    let server = Arc::new(TestServer::start().await);
    server.create("s", "text/plain").await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                let mut acknowledged = Vec::with_capacity(APPENDS_PER_WRITER);
                for n in 0..APPENDS_PER_WRITER {
                    let record = payload(writer, n);
                    let offset = server.append("s", "text/plain", record.clone()).await;
                    acknowledged.push((offset, record));
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer task panicked"));
    }
    assert_eq!(acknowledged.len(), WRITERS * APPENDS_PER_WRITER);

    let (data, tail) = server.read_all("s").await;
    assert_eq!(data.len(), WRITERS * APPENDS_PER_WRITER * RECORD);
    let records: Vec<&str> = data
        .chunks(RECORD)
        .map(|r| std::str::from_utf8(r).expect("records are ASCII"))
        .collect();

    // Ordering the acknowledged offsets (lexicographically, as §8 allows)
    // must give exactly the order of the records in the stream: offsets are
    // unique, strictly increasing with position, and no append is missing,
    // duplicated, torn or interleaved with another.
    acknowledged.sort();
    for pair in acknowledged.windows(2) {
        assert!(pair[0].0 < pair[1].0, "duplicate offset {}", pair[0].0);
    }
    let by_offset: Vec<&str> = acknowledged.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(by_offset, records);
    assert_eq!(acknowledged.last().map(|(o, _)| o), Some(&tail));

    // Each writer's appends appear in the order it made them.
    let mut next_of: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        let (writer, n) = record.split_once('-').expect("record shape");
        let n: usize = n.trim_end_matches(';').parse().expect("record number");
        let expected = next_of.entry(writer).or_default();
        assert_eq!(n, *expected, "writer {writer} out of order");
        *expected += 1;
    }

    // Resuming from any acknowledged offset gives exactly the later records.
    for (i, (offset, _)) in acknowledged.iter().enumerate().step_by(97) {
        let rest = body(server.read_from("s", offset).await).await;
        assert_eq!(rest, data[(i + 1) * RECORD..], "resuming at {offset}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_during_appends_only_see_prefixes() {
    let server = Arc::new(TestServer::start_with(|c| c.http.max_read_bytes = 256).await);
    server.create("s", "text/plain").await;
    let done = Arc::new(AtomicBool::new(false));

    // Whole-stream snapshots, and a follower resuming from its last offset.
    let snapshotter = {
        let (server, done) = (Arc::clone(&server), Arc::clone(&done));
        tokio::spawn(async move {
            let mut snapshots = Vec::new();
            while !done.load(Ordering::Acquire) {
                snapshots.push(server.read_all("s").await.0);
            }
            snapshots
        })
    };
    let follower = {
        let (server, done) = (Arc::clone(&server), Arc::clone(&done));
        tokio::spawn(async move {
            let mut offset = "-1".to_owned();
            let mut seen = Vec::new();
            let mut chunk_ends = Vec::new();
            loop {
                let finished = done.load(Ordering::Acquire);
                let response = server.read_from("s", &offset).await;
                assert_eq!(response.status(), StatusCode::OK);
                let up_to_date = header(&response, "stream-up-to-date").is_some();
                offset = next_offset(&response);
                seen.extend_from_slice(&body(response).await);
                chunk_ends.push(seen.len());
                if finished && up_to_date {
                    return (seen, chunk_ends);
                }
            }
        })
    };

    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                for n in 0..40 {
                    server.append("s", "text/plain", payload(writer, n)).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer task panicked");
    }
    done.store(true, Ordering::Release);

    let (final_data, _) = server.read_all("s").await;
    assert_eq!(final_data.len(), 8 * 40 * RECORD);
    let snapshots = snapshotter.await.expect("snapshot task panicked");
    assert!(!snapshots.is_empty());
    for snapshot in &snapshots {
        assert_eq!(snapshot.len() % RECORD, 0, "a torn append was visible");
        assert!(
            final_data.starts_with(snapshot),
            "a snapshot is not a prefix"
        );
    }
    let (followed, chunk_ends) = follower.await.expect("follower task panicked");
    assert_eq!(
        followed, final_data,
        "following offsets reassembles the stream"
    );
    for end in chunk_ends {
        assert_eq!(end % RECORD, 0, "a chunk ended inside an append");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_yield_exactly_one_201() {
    let server = Arc::new(TestServer::start().await);
    for round in 0..5 {
        let path = format!("race-{round}");
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (server, path) = (Arc::clone(&server), path.clone());
                tokio::spawn(async move {
                    let response = send(
                        server
                            .put(&path)
                            .header("content-type", "text/plain")
                            .body("initial"),
                    )
                    .await;
                    (response.status(), next_offset(&response))
                })
            })
            .collect();
        let mut statuses = Vec::new();
        let mut tails = Vec::new();
        for task in tasks {
            let (status, tail) = task.await.expect("create task panicked");
            statuses.push(status);
            tails.push(tail);
        }
        let created = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        let confirmed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        assert_eq!((created, confirmed), (1, 15), "{statuses:?}");
        tails.dedup();
        assert_eq!(tails.len(), 1, "every answer names the same tail");
        assert_eq!(
            server.read_all(&path).await.0,
            b"initial",
            "one initial body"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_producer_retries_are_deduplicated() {
    let server = Arc::new(TestServer::start().await);
    server.create("s", "text/plain").await;
    let producers: Vec<_> = (0..6)
        .map(|producer| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                for seq in 0..20u64 {
                    // The request and its retry race each other.
                    let attempt = || {
                        send(
                            server
                                .post("s")
                                .header("content-type", "text/plain")
                                .header("producer-id", format!("p{producer}"))
                                .header("producer-epoch", "0")
                                .header("producer-seq", seq.to_string())
                                .body(payload(producer, seq as usize)),
                        )
                    };
                    let (a, b) = tokio::join!(attempt(), attempt());
                    let mut statuses = [a.status(), b.status()];
                    statuses.sort();
                    assert_eq!(
                        statuses,
                        [StatusCode::OK, StatusCode::NO_CONTENT],
                        "p{producer} seq {seq}: one append, one duplicate"
                    );
                    for response in [a, b] {
                        assert_eq!(
                            header(&response, "producer-seq"),
                            Some(seq.to_string()),
                            "both report the highest accepted seq"
                        );
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.expect("producer task panicked");
    }
    let (data, _) = server.read_all("s").await;
    assert_eq!(
        data.len(),
        6 * 20 * RECORD,
        "each batch stored exactly once"
    );
    let mut records: Vec<&[u8]> = data.chunks(RECORD).collect();
    records.sort();
    records.dedup();
    assert_eq!(records.len(), 6 * 20);
}
