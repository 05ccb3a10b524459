//! The model test: random operation sequences on the backend and on a `BTreeMap` give the same
//! results (after sled's tests/tree/mod.rs, with its restarts: a reopen step for backends that
//! keep their data).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use clusterfy_core::BatchOp;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use super::check::{Bytes, Context, Ctx, Failure, Fixture, Outcome, Pair, Show, ensure_eq};

/// Sequences per run, unless `PROPTEST_CASES` says otherwise.
const SEQUENCES: u32 = 32;
/// Longest sequence.
const MAX_OPS: usize = 40;
/// How long shrinking a failure may take, in milliseconds: the watchdog must not end it first.
const MAX_SHRINK_MILLIS: u32 = 20_000;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// One step of a sequence.
#[derive(Clone)]
enum Op {
    Get(Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Scan(Vec<u8>),
    Batch(Vec<BatchOp>),
    Flush,
    /// Flush, drop the backend and open the store again.
    Reopen,
}

/// Keys from a four-symbol alphabet with NUL and 0xff, up to two long (21 keys, the empty one
/// among them), so operations collide and keys are prefixes of each other.
fn key() -> impl Strategy<Value = Vec<u8>> {
    vec(select(vec![0u8, b'a', b'b', 0xff]), 0..=2)
}

/// Values from a three-symbol alphabet, up to two long, so a guessed expected value often
/// matches.
fn value() -> impl Strategy<Value = Vec<u8>> {
    vec(select(vec![0u8, b'x', b'y']), 0..=2)
}

fn batch_op() -> impl Strategy<Value = BatchOp> {
    prop_oneof![
        3 => (key(), value()).prop_map(|(key, value)| BatchOp::Put { key, value }),
        2 => key().prop_map(|key| BatchOp::Delete { key }),
        1 => key().prop_map(|prefix| BatchOp::DeletePrefix { prefix }),
    ]
}

fn op(reopen: bool) -> BoxedStrategy<Op> {
    let ops = prop_oneof![
        3 => key().prop_map(Op::Get),
        4 => (key(), value()).prop_map(|(key, value)| Op::Put(key, value)),
        2 => key().prop_map(Op::Delete),
        2 => vec(select(vec![0u8, b'a', b'b', 0xff]), 0..=2).prop_map(Op::Scan),
        2 => vec(batch_op(), 0..=5).prop_map(Op::Batch),
        1 => Just(Op::Flush),
    ];
    if reopen { prop_oneof![20 => ops, 1 => Just(Op::Reopen)].boxed() } else { ops.boxed() }
}

/// Random operation sequences give the same results on the backend as on a `BTreeMap`.
pub(crate) async fn model_matches_btreemap(ctx: Ctx) -> Outcome {
    // A harness that cannot run here skips once, rather than failing every sequence.
    drop(ctx.fresh().await?);
    let mut config = Config {
        cases: SEQUENCES,
        max_shrink_time: MAX_SHRINK_MILLIS,
        // Regression files would land in the testkit's sources; a failure prints its sequence.
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_some() {
        config.cases = Config::default().cases;
    }
    let reopen = ctx.can_reopen();
    let runtime = tokio::runtime::Handle::current();
    let ctx = Arc::new(ctx);
    // proptest calls back synchronously: run it on a blocking thread that waits for each
    // sequence on this case's runtime.
    let result = tokio::task::spawn_blocking(move || {
        TestRunner::new(config).run(&vec(op(reopen), 1..=MAX_OPS), |ops| {
            runtime
                .block_on(run_sequence(&ctx, &ops))
                .map_err(|failure| TestCaseError::fail(failure.to_string()))
        })
    })
    .await
    .context("the model test's thread")?;
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, ops)) => Err(Failure::failed(format!(
            "the backend differs from a BTreeMap model: {reason}\n  smallest failing sequence ({} ops): {}",
            ops.len(),
            Show(&ops)
        ))),
        Err(TestError::Abort(reason)) => {
            Err(Failure::failed(format!("the model test was aborted: {reason}")))
        }
    }
}

/// Runs one sequence on a fresh store, checking every result against the model.
async fn run_sequence(ctx: &Ctx, ops: &[Op]) -> Outcome {
    let mut fixture = ctx.fresh().await?;
    let mut model = Model::new();
    for (step, op) in ops.iter().enumerate() {
        fixture = apply(fixture, &mut model, op).await.map_err(|failure| match failure {
            Failure::Failed(message) => Failure::failed(format!("step {step} ({}): {message}", Show(op))),
            skipped => skipped,
        })?;
    }
    let found = fixture.db.scan(b"").await?;
    ensure_eq!(found, pairs(&model, b""), "the whole content at the end of the sequence");
    Ok(())
}

async fn apply(fixture: Fixture, model: &mut Model, op: &Op) -> Outcome<Fixture> {
    let db = &fixture.db;
    match op {
        Op::Get(key) => {
            let found = db.get(key).await?;
            ensure_eq!(found, model.get(key).cloned(), "get returned");
        }
        Op::Put(key, value) => {
            db.put(key, value).await?;
            model.insert(key.clone(), value.clone());
        }
        Op::Delete(key) => {
            db.delete(key).await?;
            model.remove(key);
        }
        Op::Scan(prefix) => {
            let found = db.scan(prefix).await?;
            ensure_eq!(found, pairs(model, prefix), "scan_prefix returned");
        }
        Op::Batch(ops) => {
            db.batch(ops.clone()).await?;
            for op in ops {
                match op {
                    BatchOp::Put { key, value } => drop(model.insert(key.clone(), value.clone())),
                    BatchOp::Delete { key } => drop(model.remove(key)),
                    BatchOp::DeletePrefix { prefix } => model.retain(|key, _| !key.starts_with(prefix)),
                }
            }
        }
        Op::Flush => db.flush().await?,
        Op::Reopen => {
            let fixture = fixture.reopen().await?;
            let found = fixture.db.scan(b"").await?;
            ensure_eq!(found, pairs(model, b""), "the whole content after flush, drop and reopen");
            return Ok(fixture);
        }
    }
    Ok(fixture)
}

/// The model's pairs under `prefix`, in order.
fn pairs(model: &Model, prefix: &[u8]) -> Vec<Pair> {
    model
        .range(prefix.to_vec()..)
        .take_while(|(key, _)| key.starts_with(prefix))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Get(key) => write!(f, "Get({})", Bytes(key)),
            Op::Put(key, value) => write!(f, "Put({}, {})", Bytes(key), Bytes(value)),
            Op::Delete(key) => write!(f, "Delete({})", Bytes(key)),
            Op::Scan(prefix) => write!(f, "Scan({})", Bytes(prefix)),
            Op::Batch(ops) => write!(f, "Batch({})", Show(ops)),
            Op::Flush => f.write_str("Flush"),
            Op::Reopen => f.write_str("Reopen"),
        }
    }
}

impl super::check::Describe for Op {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
