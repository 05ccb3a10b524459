//! The cases of the storage suite, one per rule of the `StorageBackend` contract, named as its
//! `# Contract` bullets name them.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clusterfy_core::BatchOp;
use tokio::task::JoinSet;

use super::check::{Bytes, Context, Ctx, Failure, Outcome, Pair, Show, del, ensure, ensure_eq, put, tell};
use super::model::model_matches_btreemap;

/// A case's future.
pub(crate) type CaseFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One named case.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) run: fn(Ctx) -> CaseFuture,
}

crate::__storage_case_list!(__storage_case_table! {});

/// `len` bytes of a pattern that differs with `seed`, so that values of the same length differ.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A number written in decimal by a case.
fn number(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Keys never written read as `None`, whatever their relation to written keys.
async fn get_of_missing_key_is_none(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    db.expect(b"never written", None, "on an empty backend").await?;
    db.expect(b"", None, "(the empty key) on an empty backend").await?;
    db.put(b"dir/key", b"value").await?;
    db.expect(b"dir/", None, "of a key that is only a prefix of the written key `dir/key`").await?;
    db.expect(b"dir/key/", None, "of a key that extends the written key `dir/key`").await?;
    db.expect(b"DIR/KEY", None, "of another key than the written `dir/key` (keys are bytes)").await?;
    db.expect(b"", None, "(the empty key) after `dir/key` was written").await?;
    db.delete(b"dir/key").await?;
    db.expect(b"dir/key", None, "of a key written and then deleted").await
}

/// Values of many sizes come back unchanged.
async fn put_then_get_returns_value(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    let sizes = [0, 1, 2, 255, 256, 4 * 1024, 64 * 1024];
    let pairs: Vec<Pair> = (0u8..)
        .zip(sizes)
        .map(|(seed, len)| (format!("size/{len}").into_bytes(), pattern(seed, len)))
        .collect();
    for (key, value) in &pairs {
        db.put(key, value).await?;
        db.expect(key, Some(value), "right after it was put").await?;
    }
    for (key, value) in &pairs {
        db.expect(key, Some(value), "after other keys were put").await?;
    }
    Ok(())
}

/// A second put wins, whatever the lengths, and leaves a single pair.
async fn put_replaces_previous_value(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    db.put(b"k", b"first").await?;
    // Longer, then shorter (an in-place overwrite that keeps the old tail is caught), then empty.
    for value in [&b"second, and longer"[..], b"3", b"", b"back from empty"] {
        db.put(b"k", value).await?;
        db.expect(b"k", Some(value), "after a put replaced the previous value").await?;
    }
    db.expect_all(&[(b"k", b"back from empty")], "after five puts to one key (one pair, the last value)")
        .await
}

/// A deleted key is gone for every reader, its neighbours stay, and it can come back.
async fn delete_removes_key(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    for key in [&b"a"[..], b"ab", b"abc", b"b"] {
        db.put(key, key).await?;
    }
    db.delete(b"ab").await?;
    db.expect(b"ab", None, "after it was deleted").await?;
    db.expect(b"a", Some(b"a"), "after its neighbour `ab` was deleted").await?;
    db.expect(b"abc", Some(b"abc"), "after the key `ab`, a prefix of it, was deleted").await?;
    db.expect_all(&[(b"a", b"a"), (b"abc", b"abc"), (b"b", b"b")], "after `ab` was deleted").await?;
    let found = db.scan(b"ab").await?;
    let expected: Vec<Pair> = vec![(b"abc".to_vec(), b"abc".to_vec())];
    ensure_eq!(found, expected, "scan_prefix(b\"ab\") after `ab` was deleted");
    db.put(b"ab", b"again").await?;
    db.expect(b"ab", Some(b"again"), "after it was deleted and put again").await
}

/// Deleting what is not there succeeds and changes nothing.
async fn delete_of_missing_key_is_ok(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    db.delete(b"never written").await.map_err(missing_delete)?;
    db.delete(b"").await.map_err(missing_delete)?;
    db.put(b"present", b"v").await?;
    db.delete(b"absent").await.map_err(missing_delete)?;
    db.expect_all(&[(b"present", b"v")], "after deleting an absent key").await?;
    db.delete(b"present").await?;
    db.delete(b"present").await.map_err(missing_delete)?;
    db.expect_all(&[], "after deleting the only key twice").await
}

fn missing_delete(failure: Failure) -> Failure {
    match failure {
        Failure::Failed(message) => {
            Failure::failed(format!("{message} (deleting a missing key must be Ok(()), not an error)"))
        }
        skipped => skipped,
    }
}

/// Exactly the keys with the prefix, in unsigned byte order.
async fn scan_prefix_is_ordered_and_exact(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    // Written out of order; 0x7f/0x80 and 0x00/0xff tell unsigned from signed or text order.
    let keys: [&[u8]; 18] = [
        b"b",
        b"ab",
        b"a",
        b"a\0x",
        b"a\xff",
        b"ac",
        b"",
        b"\xff",
        b"\0",
        b"a\xff\xff",
        b"aa",
        b"A",
        b"a\x7f",
        b"a\x80",
        b"a\0",
        b"ab\0",
        b"abc",
        b"b\xff",
    ];
    let mut model = BTreeMap::new();
    for (seed, key) in (0u8..).zip(keys) {
        // Distinct values, so a value paired with the wrong key shows.
        let value = [key, &[b'=', seed]].concat();
        db.put(key, &value).await?;
        model.insert(key.to_vec(), value);
    }
    let prefixes: [&[u8]; 12] =
        [b"", b"a", b"ab", b"abc", b"abcd", b"a\0", b"a\xff", b"\xff", b"\0", b"b", b"c", b"A"];
    for prefix in prefixes {
        let found = db.scan(prefix).await?;
        let expected: Vec<Pair> = model
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        ensure_eq!(
            found,
            expected,
            "scan_prefix({}) must return every pair whose key starts with the prefix, in ascending \
             unsigned byte order of the key, and nothing else",
            Bytes(prefix)
        );
    }
    Ok(())
}

/// Operations of a batch apply in order: the last one on a key wins.
async fn batch_applies_in_order(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    db.put(b"gone", b"x").await?;
    db.put(b"kept", b"x").await?;
    db.batch(vec![
        put(b"k", b"1"),
        put(b"k", b"2"),
        del(b"gone"),
        put(b"back", b"1"),
        del(b"back"),
        del(b"missing"),
        put(b"revived", b"1"),
        del(b"revived"),
        put(b"revived", b"2"),
        put(b"", b"empty key"),
    ])
    .await?;
    let after_first = [(&b""[..], &b"empty key"[..]), (b"k", b"2"), (b"kept", b"x"), (b"revived", b"2")];
    db.expect_all(&after_first, "after a batch (put k 1, put k 2, delete gone, put back, delete back, ...)")
        .await?;
    db.batch(Vec::new()).await?;
    db.expect_all(&after_first, "after an empty batch").await?;
    db.batch(vec![del(b"k"), put(b"k", b"3"), put(b"kept", b"y"), del(b"kept")]).await?;
    db.expect_all(
        &[(b"", b"empty key"), (b"k", b"3"), (b"revived", b"2")],
        "after a batch (delete k, put k 3, put kept, delete kept)",
    )
    .await
}

/// Batches run while readers read; no reader sees two rounds at once.
async fn batch_delete_prefix_removes_exactly_the_prefix(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    for key in [&b"a"[..], b"a\x00", b"a\x00b", b"a\x00b\x00c", b"a\x01", b"b", b"\x00"] {
        db.put(key, b"x").await?;
    }
    let prefix = |prefix: &[u8]| BatchOp::DeletePrefix { prefix: prefix.to_vec() };
    db.batch(vec![put(b"a\x00new", b"1"), prefix(b"a\x00"), put(b"a\x00after", b"2")]).await?;
    db.expect_all(
        &[(b"\x00", b"x"), (b"a", b"x"), (b"a\x00after", b"2"), (b"a\x01", b"x"), (b"b", b"x")],
        "after a batch (put a\\0new, delete prefix a\\0, put a\\0after)",
    )
    .await?;
    db.batch(vec![prefix(b"nothing here")]).await?;
    db.batch(vec![prefix(b"")]).await?;
    db.expect_all(&[], "after deleting the empty prefix").await
}

async fn batch_is_atomic_for_readers(ctx: Ctx) -> Outcome {
    const KEYS: u8 = 64;
    const READERS: usize = 3;
    /// The writer goes on until it has applied this many batches, readers have read this often
    /// while it ran, and this much time has passed, so that reads and batches overlap many times
    /// even on a fast backend (a race window between two operations of a batch can be tiny)...
    const MIN_ROUNDS: u32 = 200;
    const MIN_READS: u64 = 2_000;
    const WRITE_FOR_AT_LEAST: Duration = Duration::from_millis(300);
    /// ... or until this much time has passed (on a loaded machine readers may get little CPU).
    const WRITE_FOR_AT_MOST: Duration = Duration::from_secs(5);
    /// Fewer overlapping reads than this and the case has not tested anything.
    const ENOUGH_READS: u64 = 10;

    fn key(k: u8) -> Vec<u8> {
        [b"batch/k".as_slice(), &[k]].concat()
    }
    fn marker(round: u32) -> Vec<u8> {
        [b"batch/marker/".as_slice(), &round.to_be_bytes()].concat()
    }
    /// Round `round`: move the marker, and set every key to the round (in decimal, readable in a
    /// failure message).
    fn round_batch(round: u32) -> Vec<BatchOp> {
        let value = round.to_string().into_bytes();
        let mut ops = Vec::new();
        if let Some(previous) = round.checked_sub(1) {
            ops.push(del(&marker(previous)));
        }
        ops.extend((0..KEYS).map(|k| put(&key(k), &value)));
        ops.push(put(&marker(round), &value));
        ops
    }
    fn round_of(value: Option<&[u8]>, what: &str) -> Outcome<u32> {
        let value =
            value.ok_or_else(|| Failure::failed(format!("{what} was absent while batches rewrote it")))?;
        number(value)
            .ok_or_else(|| Failure::failed(format!("{what} holds {}, which no batch wrote", Bytes(value))))
    }

    /// What a scan saw, shortly: how many keys had each value, and the markers.
    fn by_round(keys: &[&Pair], markers: &[&Pair]) -> String {
        let mut counts = BTreeMap::<&[u8], usize>::new();
        for (_, value) in keys {
            *counts.entry(value).or_default() += 1;
        }
        let counts: Vec<String> =
            counts.iter().map(|(value, count)| format!("{count} keys = {}", Bytes(value))).collect();
        let markers: Vec<String> =
            markers.iter().map(|(key, value)| format!("{} = {}", Bytes(key), Bytes(value))).collect();
        format!("{} of {KEYS} keys: {}; markers: [{}]", keys.len(), counts.join(", "), markers.join(", "))
    }

    let fixture = ctx.fresh().await?;
    fixture.db.batch(round_batch(0)).await?;
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for reader in 0..READERS {
        let (db, done, reads) = (fixture.db.clone(), Arc::clone(&done), Arc::clone(&reads));
        tasks.spawn(async move {
            while !done.load(Ordering::Acquire) {
                // A scan sees one round: every key and the one marker equal.
                let seen = db.scan(b"batch/").await?;
                let markers: Vec<&Pair> =
                    seen.iter().filter(|(k, _)| k.starts_with(b"batch/marker/")).collect();
                let keys: Vec<&Pair> =
                    seen.iter().filter(|(k, _)| !k.starts_with(b"batch/marker/")).collect();
                let consistent = markers.len() == 1
                    && keys.len() == usize::from(KEYS)
                    && seen.iter().all(|(_, v)| *v == markers[0].1)
                    && markers[0].0 == marker(round_of(Some(&markers[0].1), "the marker")?);
                ensure!(
                    consistent,
                    "reader {reader}: scan_prefix(b\"batch/\") saw part of a batch (each batch sets \
                     all {KEYS} keys to its round and moves the one marker key to its round): {}",
                    by_round(&keys, &markers)
                );
                // Two gets in either order: once a round is visible in one key, the other key
                // already has it too.
                let (first, last) = if reader % 2 == 0 { (0, KEYS - 1) } else { (KEYS - 1, 0) };
                let a = round_of(db.get(&key(first)).await?.as_deref(), "a key")?;
                let b = round_of(db.get(&key(last)).await?.as_deref(), "a key")?;
                ensure!(
                    b >= a,
                    "reader {reader}: get({}) saw round {a}, then get({}) saw the older round {b}: \
                     the first key was read from a batch that was not fully applied",
                    Bytes(&key(first)),
                    Bytes(&key(last))
                );
                if !done.load(Ordering::Acquire) {
                    reads.fetch_add(1, Ordering::AcqRel);
                }
                // A backend whose calls never wait (memory) would otherwise keep this worker
                // thread forever, and tasks queued behind it would never run.
                tokio::task::yield_now().await;
            }
            Ok(())
        });
    }
    let writer = {
        let (db, done, reads) = (fixture.db.clone(), Arc::clone(&done), Arc::clone(&reads));
        tasks.spawn(async move {
            let started = Instant::now();
            let mut round = 1;
            let outcome = loop {
                if let Err(failure) = db.batch(round_batch(round)).await {
                    break Err(failure);
                }
                let elapsed = started.elapsed();
                let enough = reads.load(Ordering::Acquire) >= MIN_READS && elapsed >= WRITE_FOR_AT_LEAST;
                if round >= MIN_ROUNDS && (enough || elapsed >= WRITE_FOR_AT_MOST) {
                    break Ok(());
                }
                round += 1;
                // As the readers do: leaves other tasks their turn on a busy runtime.
                tokio::task::yield_now().await;
            };
            done.store(true, Ordering::Release);
            outcome
        })
    };
    let writer_id = writer.id();
    while let Some(joined) = tasks.join_next_with_id().await {
        let (id, outcome) = joined.context("a task of the case")?;
        match outcome {
            Err(Failure::Failed(message)) if id == writer_id => {
                return Err(Failure::failed(format!("the writer: {message}")));
            }
            // Readers name themselves.
            Err(failure) => return Err(failure),
            Ok(()) => {}
        }
    }
    let reads = reads.load(Ordering::Acquire);
    ensure!(
        reads >= ENOUGH_READS,
        "only {reads} reads completed while batches were applied for {WRITE_FOR_AT_MOST:?}: readers must \
         be able to read between batches, or the case cannot tell whether batches are atomic"
    );
    Ok(())
}

/// Empty keys and values, NUL bytes, 0xff, invalid UTF-8 and every byte value, through every
/// method.
async fn keys_and_values_are_binary_safe(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    let every_byte: Vec<u8> = (0..=255).collect();
    let every_byte_reversed: Vec<u8> = (0..=255).rev().collect();
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b"", b"the empty key"),
        (b"empty value", b""),
        (b"\0", b"\0"),
        (b"\0\0", b"\0\0\0"),
        (b"a", b"a"),
        // Truncating at NUL (C strings) would make these three one key.
        (b"a\0", b"a NUL"),
        (b"a\0b", b"\0\xff\0"),
        (b"\xff\xfe", b"\xc3\x28 is not UTF-8"),
        (b"\r\n", b"$3\r\nset\r\n"),
        (b" ", b" "),
        (&every_byte, &every_byte_reversed),
    ];
    for (key, value) in &pairs {
        db.put(key, value).await?;
    }
    for (key, value) in &pairs {
        db.expect(key, Some(value), "after binary keys and values were put").await?;
    }
    let mut sorted = pairs.clone();
    sorted.sort();
    db.expect_all(&sorted, "after binary keys and values were put").await?;
    let found = db.scan(b"a\0").await?;
    let expected: Vec<Pair> =
        vec![(b"a\0".to_vec(), b"a NUL".to_vec()), (b"a\0b".to_vec(), b"\0\xff\0".to_vec())];
    ensure_eq!(found, expected, "scan_prefix(b\"a\\0\")");
    let found = db.scan(b"\0").await?;
    ensure_eq!(
        found.len(),
        3,
        "scan_prefix(b\"\\0\") (keys \\0, \\0\\0 and every byte from 0): {}",
        Show(&found)
    );

    db.batch(vec![put(b"\0", b""), put(&every_byte, &every_byte)]).await?;
    db.batch(vec![put(b"\0\xff", b"\xff\0"), del(b""), put(b"\xff", b"")]).await?;
    db.expect(b"", None, "after a batch deleted the empty key").await?;
    db.expect(b"\0\xff", Some(b"\xff\0"), "after a batch put it").await?;
    db.expect(b"\xff", Some(b""), "after a batch put the empty value").await?;
    db.expect(b"\0", Some(b""), "after a batch put the empty value over b\"\\0\"").await?;
    db.expect(&every_byte, Some(&every_byte), "after a batch replaced every byte reversed").await?;
    db.delete(b"a\0").await?;
    db.expect(b"a", Some(b"a"), "after the key b\"a\\0\" was deleted").await?;
    db.expect(b"a\0b", Some(b"\0\xff\0"), "after the key b\"a\\0\" was deleted").await
}

/// `flush` succeeds after every kind of write, concurrently with writes, and changes nothing.
async fn flush_after_writes_succeeds(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let db = &fixture.db;
    db.flush().await?;
    db.put(b"put", b"1").await?;
    db.flush().await?;
    db.put(b"deleted", b"1").await?;
    db.delete(b"deleted").await?;
    db.flush().await?;
    db.batch(vec![put(b"swapped", b"1")]).await?;
    db.flush().await?;
    db.batch(vec![put(b"batch", b"1"), del(b"put"), put(b"put", b"2")]).await?;
    db.flush().await?;
    db.flush().await?;
    db.expect_all(&[(b"batch", b"1"), (b"put", b"2"), (b"swapped", b"1")], "after writes and flushes")
        .await?;

    // Flushes racing with writes from other tasks.
    let mut tasks = JoinSet::new();
    for task in 0..4u8 {
        let db = db.clone();
        tasks.spawn(async move {
            for i in 0..20u8 {
                db.put(&[b'c', task, i], &[i]).await?;
                db.flush().await?;
            }
            Outcome::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a writing and flushing task")??;
    }
    let found = db.scan(b"c").await?;
    ensure_eq!(found.len(), 80, "scan_prefix(b\"c\") after 4 tasks each put and flushed 20 keys");
    Ok(())
}

/// Flushed writes are there after the backend is dropped and opened again; a backend that
/// cannot be reopened must not claim durability.
async fn durable_writes_survive_reopen(ctx: Ctx) -> Outcome {
    let fixture = ctx.fresh().await?;
    let capabilities = fixture.db.capabilities();
    if !ctx.can_reopen() {
        ensure!(
            !capabilities.durable,
            "capabilities() claims `durable`, but the harness cannot reopen a store, so the claim cannot \
             be checked: make StorageHarness::can_reopen return true and open the same data again"
        );
        tell(&format!(
            "{}: volatile backend: checked that it does not claim durability (there is no data to \
             reopen)",
            ctx.test
        ));
        return Ok(());
    }
    let big = pattern(7, 64 * 1024);
    let db = &fixture.db;
    db.put(b"put", b"1").await?;
    db.put(b"replaced", b"old").await?;
    db.put(b"replaced", b"new").await?;
    db.put(b"deleted", b"x").await?;
    db.delete(b"deleted").await?;
    db.batch(vec![put(b"swapped", b"1"), put(b"swapped", b"2")]).await?;
    db.batch(vec![put(b"batch/a", b"1"), put(b"batch/b", b"1"), del(b"batch/a")]).await?;
    db.put(b"", b"\0").await?;
    db.put(b"big", &big).await?;
    db.flush().await?;
    let expected: [(&[u8], &[u8]); 6] = [
        (b"", b"\0"),
        (b"batch/b", b"1"),
        (b"big", &big),
        (b"put", b"1"),
        (b"replaced", b"new"),
        (b"swapped", b"2"),
    ];
    let fixture = fixture.reopen().await?;
    fixture.db.expect_all(&expected, "after flush, drop and reopen").await?;
    fixture.db.expect(b"big", Some(&big), "after flush, drop and reopen").await?;
    ensure_eq!(
        fixture.db.capabilities().durable,
        capabilities.durable,
        "capabilities().durable after reopen"
    );

    let db = &fixture.db;
    db.delete(b"put").await?;
    db.put(b"replaced", b"newer").await?;
    db.batch(vec![del(b"swapped")]).await?;
    db.batch(vec![del(b"big"), put(b"batch/c", b"1")]).await?;
    db.flush().await?;
    let fixture = fixture.reopen().await?;
    fixture
        .db
        .expect_all(
            &[(b"", b"\0"), (b"batch/b", b"1"), (b"batch/c", b"1"), (b"replaced", b"newer")],
            "after more writes (deletes among them), flush, drop and a second reopen",
        )
        .await
}

/// Many tasks writing at once: nothing is lost.
async fn concurrent_writers_lose_nothing(ctx: Ctx) -> Outcome {
    const TASKS: u8 = 8;
    const PUTS: u16 = 50;
    const BATCHED: u16 = 10;
    const DELETED: u16 = 5;

    fn key(task: u8, i: u16) -> Vec<u8> {
        [b"w/".as_slice(), &[task], &i.to_be_bytes()].concat()
    }

    let fixture = ctx.fresh().await?;
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let db = fixture.db.clone();
        tasks.spawn(async move {
            for i in 0..PUTS {
                db.put(&key(task, i), &i.to_be_bytes()).await?;
            }
            db.batch((PUTS..PUTS + BATCHED).map(|i| put(&key(task, i), &i.to_be_bytes())).collect()).await?;
            for i in 0..DELETED {
                db.delete(&key(task, i)).await?;
            }
            Outcome::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a writing task")??;
    }
    let db = &fixture.db;
    let found = db.scan(b"w/").await?;
    let expected: Vec<Pair> = (0..TASKS)
        .flat_map(|task| (DELETED..PUTS + BATCHED).map(move |i| (key(task, i), i.to_be_bytes().to_vec())))
        .collect();
    ensure!(
        found == expected,
        "scan_prefix(b\"w/\") after {TASKS} tasks at once each put {PUTS} keys, batched {BATCHED} more and \
         deleted {DELETED}: expected {} pairs, found {}; missing: {}; unexpected: {}",
        expected.len(),
        found.len(),
        Show(&expected.iter().filter(|pair| !found.contains(pair)).cloned().collect::<Vec<Pair>>()),
        Show(&found.iter().filter(|pair| !expected.contains(pair)).cloned().collect::<Vec<Pair>>())
    );
    Ok(())
}
