//! The linearizability checker on hand-made histories: linearizable ones are accepted, the
//! classic anomalies are rejected with a counterexample, unknown outcomes are handled, and the
//! time budget yields an honest Unknown.

use std::time::Duration;

use raftkv_tests::linearizability::{check, Op, OpKind, Verdict};

const BUDGET: Duration = Duration::from_secs(5);

fn v(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn read(client: u64, invoke: u64, complete: u64, result: Option<String>) -> Op {
    Op {
        client,
        key: "x".into(),
        kind: OpKind::Read { result },
        invoke,
        complete: Some(complete),
    }
}

fn write(client: u64, invoke: u64, complete: Option<u64>, value: &str) -> Op {
    Op {
        client,
        key: "x".into(),
        kind: OpKind::Write { value: value.into() },
        invoke,
        complete,
    }
}

fn cas(client: u64, invoke: u64, complete: Option<u64>, expected: Option<String>, new: &str, ok: Option<bool>) -> Op {
    Op {
        client,
        key: "x".into(),
        kind: OpKind::Cas {
            expected,
            new: new.into(),
            succeeded: ok,
        },
        invoke,
        complete,
    }
}

fn verdict(history: &[Op]) -> Verdict {
    check(history, BUDGET).per_key.remove("x").expect("key x checked")
}

fn assert_linearizable(name: &str, history: &[Op]) {
    assert_eq!(verdict(history), Verdict::Linearizable, "{name}");
}

fn assert_violation(name: &str, history: &[Op]) -> String {
    match verdict(history) {
        Verdict::Violation(c) => c.to_string(),
        other => panic!("{name}: expected a violation, got {other:?}"),
    }
}

#[test]
fn sequential_and_concurrent_histories_that_are_linearizable() {
    assert_linearizable(
        "sequential write then read",
        &[write(1, 0, Some(10), "a"), read(2, 20, 30, v("a"))],
    );
    assert_linearizable("read of an absent key", &[read(1, 0, 5, None)]);
    // A read overlapping a write may see either value.
    assert_linearizable(
        "overlap sees the old value",
        &[
            write(1, 0, Some(5), "a"),
            write(1, 10, Some(30), "b"),
            read(2, 15, 20, v("a")),
        ],
    );
    assert_linearizable(
        "overlap sees the new value",
        &[
            write(1, 0, Some(5), "a"),
            write(1, 10, Some(30), "b"),
            read(2, 15, 20, v("b")),
        ],
    );
    // Two concurrent writes, then reads that agree on an order.
    assert_linearizable(
        "concurrent writes ordered by the reads",
        &[
            write(1, 0, Some(10), "a"),
            write(2, 0, Some(10), "b"),
            read(3, 20, 25, v("a")),
            read(3, 30, 35, v("a")),
        ],
    );
    assert_linearizable(
        "compare-and-swap chain",
        &[
            write(1, 0, Some(5), "0"),
            cas(1, 10, Some(15), v("0"), "1", Some(true)),
            cas(2, 12, Some(20), v("0"), "2", Some(false)),
            read(3, 25, 30, v("1")),
        ],
    );
}

#[test]
fn a_stale_read_is_rejected() {
    let c = assert_violation(
        "stale read",
        &[
            write(1, 0, Some(10), "a"),
            write(1, 20, Some(30), "b"),
            read(2, 40, 50, v("a")),
        ],
    );
    assert!(c.contains("read(x) -> a"), "{c}");
}

#[test]
fn a_lost_write_is_rejected() {
    // b was acknowledged, yet a later read finds the key absent.
    assert_violation("lost write", &[write(1, 0, Some(10), "b"), read(2, 20, 30, None)]);
}

#[test]
fn a_read_of_a_value_never_written_is_rejected() {
    let c = assert_violation("phantom value", &[write(1, 0, Some(10), "a"), read(2, 5, 15, v("zzz"))]);
    assert!(c.contains("zzz"), "{c}");
}

#[test]
fn a_compare_and_swap_that_succeeded_twice_is_rejected() {
    assert_violation(
        "double CAS",
        &[
            write(1, 0, Some(5), "free"),
            cas(1, 10, Some(20), v("free"), "owner-1", Some(true)),
            cas(2, 10, Some(20), v("free"), "owner-2", Some(true)),
        ],
    );
    // And a CAS reported as failed although the value matched.
    assert_violation(
        "CAS failed on a match",
        &[
            write(1, 0, Some(5), "0"),
            cas(1, 10, Some(20), v("0"), "1", Some(false)),
        ],
    );
}

#[test]
fn reads_must_not_go_back_in_time() {
    // Once a read saw b, a later read cannot see a again (the heart of linearizability).
    assert_violation(
        "non-monotonic reads",
        &[
            write(1, 0, Some(100), "b"),
            read(2, 10, 20, v("b")),
            read(3, 30, 40, None),
        ],
    );
}

#[test]
fn an_indeterminate_write_may_have_happened_or_not() {
    assert_linearizable("never happened", &[write(1, 0, None, "a"), read(2, 50, 60, None)]);
    assert_linearizable("happened", &[write(1, 0, None, "a"), read(2, 50, 60, v("a"))]);
    assert_linearizable(
        "happened late (after another write)",
        &[
            write(1, 0, None, "a"),
            write(2, 10, Some(20), "b"),
            read(3, 30, 40, v("b")),
            read(3, 50, 60, v("a")),
        ],
    );
    // But not before it was invoked.
    assert_violation(
        "seen before invoked",
        &[read(2, 0, 10, v("a")), write(1, 20, None, "a")],
    );
    // An indeterminate CAS is free to have succeeded or failed, as the state allows.
    assert_linearizable(
        "indeterminate CAS took effect",
        &[
            write(1, 0, Some(5), "0"),
            cas(1, 10, None, v("0"), "1", None),
            read(2, 30, 40, v("1")),
        ],
    );
}

#[test]
fn keys_are_checked_independently() {
    let mut other = write(1, 0, Some(10), "a");
    other.key = "y".into();
    let mut stale = read(2, 20, 30, None);
    stale.key = "y".into();
    let history = vec![write(1, 0, Some(10), "a"), read(2, 20, 30, v("a")), other, stale];
    let report = check(&history, BUDGET);
    assert_eq!(report.per_key["x"], Verdict::Linearizable);
    assert!(matches!(report.per_key["y"], Verdict::Violation(_)));
    assert!(!report.is_linearizable());
    assert_eq!(report.violations().count(), 1);
}

#[test]
fn a_large_concurrent_history_is_decided_quickly() {
    // 8 clients, 300 rounds: each round every client writes its own value concurrently, then
    // one client reads the value of the last writer in client order. Linearizable.
    let mut history = Vec::new();
    let mut t = 0;
    for round in 0..300 {
        for c in 0..8 {
            history.push(write(c, t, Some(t + 10), &format!("{round}-{c}")));
        }
        history.push(read(9, t + 20, t + 30, v(&format!("{round}-7"))));
        t += 40;
    }
    let started = std::time::Instant::now();
    assert_linearizable("large", &history);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_budget_gives_an_honest_unknown() {
    // Forty concurrent writes of unknown outcome and a read that no order explains: 2^40
    // subsets to rule out. The search must give up within its budget rather than guess.
    let mut history: Vec<Op> = (0..40).map(|c| write(c, 0, None, &format!("w{c}"))).collect();
    history.push(read(99, 1, 1_000, v("never-written")));
    let started = std::time::Instant::now();
    let report = check(&history, Duration::from_millis(200));
    assert_eq!(report.per_key["x"], Verdict::Unknown);
    assert!(started.elapsed() < Duration::from_secs(2), "the budget was kept");
    // A smaller instance of the same shape is settled within the budget.
    history.drain(12..40);
    assert!(matches!(check(&history, BUDGET).per_key["x"], Verdict::Violation(_)));
}
