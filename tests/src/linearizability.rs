//! A linearizability checker for a key-value store of registers with compare-and-swap.
//!
//! A history of operations (each with an invocation time, a completion time — or none when the
//! outcome is unknown — and its result) is linearizable if every operation can be given a point
//! between its invocation and completion such that, applied in that order, a single register
//! per key produces exactly the observed results.
//!
//! - **Per-key decomposition**: registers are independent, so a history is linearizable iff
//!   each key's sub-history is (Herlihy & Wing's locality). Each key is checked on its own.
//! - **Search**: Wing & Gong's algorithm with Lowe's memoization, as in Porcupine: walk the
//!   call/return events in time order, try to linearize pending calls, and backtrack when a
//!   return is reached whose call has not been linearized. A (set of linearized ops, register
//!   state) pair already explored is never explored again.
//! - **Unknown outcomes**: an indeterminate operation (a write that timed out) has no
//!   completion: it may take effect at any point after its invocation, or never. Its result,
//!   if it has one (a CAS), is unconstrained.
//! - **Budget**: each key's search stops after a time budget and reports `Unknown` — an honest
//!   "could not decide", never a guess.
//! - **Counterexample**: when a key is not linearizable, the report names the operation whose
//!   completion could not be explained, the register state the deepest search reached before
//!   it, and the operations concurrent with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A register value; `None` is "the key does not exist".
pub type Value = Option<String>;

/// What an operation did and, when known, what it returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpKind {
    /// A read that returned `result`.
    Read { result: Value },
    /// A write of `value`.
    Write { value: String },
    /// If the register holds `expected`, set it to `new`. `succeeded` is the returned outcome
    /// (`None` when unknown).
    Cas {
        expected: Value,
        new: String,
        succeeded: Option<bool>,
    },
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Which client issued it (for reports).
    pub client: u64,
    pub key: String,
    #[serde(flatten)]
    pub kind: OpKind,
    /// When it was invoked (any monotonic unit, e.g. ns since the run started).
    pub invoke: u64,
    /// When it completed; `None` when its outcome is unknown (it may or may not have happened).
    pub complete: Option<u64>,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let done = self.complete.map_or("?".to_string(), |c| c.to_string());
        let show = |v: &Value| v.clone().unwrap_or_else(|| "∅".into());
        match &self.kind {
            OpKind::Read { result } => write!(f, "client {} read({}) -> {}", self.client, self.key, show(result))?,
            OpKind::Write { value } => write!(f, "client {} write({}, {})", self.client, self.key, value)?,
            OpKind::Cas {
                expected,
                new,
                succeeded,
            } => write!(
                f,
                "client {} cas({}, {} -> {}) -> {}",
                self.client,
                self.key,
                show(expected),
                new,
                succeeded.map_or("?".to_string(), |s| s.to_string())
            )?,
        }
        write!(f, " [{}, {}]", self.invoke, done)
    }
}

/// The checker's answer for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// Not linearizable; the counterexample explains where it breaks.
    Violation(Counterexample),
    /// The search ran out of its time budget.
    Unknown,
}

/// Where a non-linearizable history breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counterexample {
    /// The operation whose completion no ordering could explain.
    pub stuck: Op,
    /// The register state the deepest search reached just before it.
    pub state: Value,
    /// How many operations were linearized in that deepest search.
    pub linearized: usize,
    /// The last operations of that deepest linearization, in order (how the state came about).
    pub recent: Vec<Op>,
    /// Operations overlapping the stuck one in time (the ones an ordering could shuffle).
    pub concurrent: Vec<Op>,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "after linearizing {} operations the register held {}; then nothing explains:",
            self.linearized,
            self.state.clone().unwrap_or_else(|| "∅ (absent)".into())
        )?;
        writeln!(f, "  {}", self.stuck)?;
        if !self.recent.is_empty() {
            writeln!(f, "the last operations of that linearization, in order:")?;
            for op in &self.recent {
                writeln!(f, "  {op}")?;
            }
        }
        if !self.concurrent.is_empty() {
            writeln!(f, "concurrent with it:")?;
            for op in &self.concurrent {
                writeln!(f, "  {op}")?;
            }
        }
        Ok(())
    }
}

/// The checker's answer for a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub per_key: BTreeMap<String, Verdict>,
}

impl Report {
    pub fn is_linearizable(&self) -> bool {
        self.per_key.values().all(|v| *v == Verdict::Linearizable)
    }

    pub fn violations(&self) -> impl Iterator<Item = (&String, &Counterexample)> {
        self.per_key.iter().filter_map(|(k, v)| match v {
            Verdict::Violation(c) => Some((k, c)),
            _ => None,
        })
    }

    pub fn unknown_keys(&self) -> Vec<&String> {
        self.per_key
            .iter()
            .filter(|(_, v)| **v == Verdict::Unknown)
            .map(|(k, _)| k)
            .collect()
    }
}

/// Checks a whole history, key by key, giving each key at most `budget`.
pub fn check(history: &[Op], budget: Duration) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let per_key = by_key
        .into_iter()
        .map(|(k, ops)| (k.to_string(), check_key(&ops, budget)))
        .collect();
    Report { per_key }
}

/// Register state, with values interned to small integers (0 = absent).
type State = u32;

struct Interner {
    ids: HashMap<Value, State>,
}

impl Interner {
    fn new() -> Self {
        Self {
            ids: HashMap::from([(None, 0)]),
        }
    }

    fn id(&mut self, v: &Value) -> State {
        let next = self.ids.len() as State;
        *self.ids.entry(v.clone()).or_insert(next)
    }

    fn value(&self, id: State) -> Value {
        self.ids.iter().find(|(_, i)| **i == id).and_then(|(v, _)| v.clone())
    }
}

/// An operation with its values interned.
#[derive(Clone, Copy)]
enum Step {
    Read(State),
    Write(State),
    Cas {
        expected: State,
        new: State,
        succeeded: Option<bool>,
    },
}

impl Step {
    /// The state after applying this step to `s`, or `None` if its result contradicts `s`.
    fn apply(self, s: State) -> Option<State> {
        match self {
            Step::Read(r) => (r == s).then_some(s),
            Step::Write(v) => Some(v),
            Step::Cas {
                expected,
                new,
                succeeded,
            } => {
                let holds = s == expected;
                match succeeded {
                    Some(reported) if reported != holds => None,
                    _ => Some(if holds { new } else { s }),
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// A doubly linked list over the event vector, so events can be lifted out and put back in
/// O(1) during the search.
struct Events {
    events: Vec<Event>,
    prev: Vec<usize>,
    next: Vec<usize>,
    /// Index of each op's return event (`usize::MAX` when it has none).
    ret_of: Vec<usize>,
    head: usize,
    /// Return events still in the list: completed ops not yet linearized.
    returns_left: usize,
}

const NIL: usize = usize::MAX;

impl Events {
    fn new(events: Vec<Event>, n_ops: usize) -> Self {
        let n = events.len();
        let mut ret_of = vec![NIL; n_ops];
        for (i, e) in events.iter().enumerate() {
            if !e.is_call {
                ret_of[e.op] = i;
            }
        }
        let returns_left = events.iter().filter(|e| !e.is_call).count();
        Self {
            returns_left,
            prev: (0..n).map(|i| if i == 0 { NIL } else { i - 1 }).collect(),
            next: (0..n).map(|i| if i + 1 == n { NIL } else { i + 1 }).collect(),
            events,
            ret_of,
            head: if n == 0 { NIL } else { 0 },
        }
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p] = n;
        }
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = i;
        } else {
            self.next[p] = i;
        }
        if n != NIL {
            self.prev[n] = i;
        }
    }

    /// Removes op's call (at `call`) and its return, if any.
    fn lift(&mut self, call: usize) {
        let op = self.events[call].op;
        self.unlink(call);
        if self.ret_of[op] != NIL {
            self.unlink(self.ret_of[op]);
            self.returns_left -= 1;
        }
    }

    /// Undoes [`Self::lift`] (in reverse order).
    fn unlift(&mut self, call: usize) {
        let op = self.events[call].op;
        if self.ret_of[op] != NIL {
            self.relink(self.ret_of[op]);
            self.returns_left += 1;
        }
        self.relink(call);
    }
}

fn check_key(ops: &[&Op], budget: Duration) -> Verdict {
    let started = Instant::now();
    let mut interner = Interner::new();
    let steps: Vec<Step> = ops
        .iter()
        .map(|op| match &op.kind {
            OpKind::Read { result } => Step::Read(interner.id(result)),
            OpKind::Write { value } => Step::Write(interner.id(&Some(value.clone()))),
            OpKind::Cas {
                expected,
                new,
                succeeded,
            } => Step::Cas {
                expected: interner.id(expected),
                new: interner.id(&Some(new.clone())),
                succeeded: *succeeded,
            },
        })
        .collect();
    // Events in time order; at equal times, returns before calls (an op that returns at t
    // precedes one invoked at t).
    let mut events = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, 1u8, Event { op: i, is_call: true }));
        if let Some(c) = op.complete {
            events.push((c, 0u8, Event { op: i, is_call: false }));
        }
    }
    events.sort_by_key(|(t, order, e)| (*t, *order, e.op));
    let mut list = Events::new(events.into_iter().map(|(_, _, e)| e).collect(), ops.len());

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new(); // (call event index, state before it)
    let mut state: State = 0;
    let mut cursor = list.head;
    // The deepest point reached, for the counterexample: depth, state, stuck op, and the last
    // few operations linearized on the way there.
    const RECENT: usize = 6;
    let mut deepest: (usize, State, usize, Vec<usize>) = (0, 0, NIL, Vec::new());
    let mut steps_taken: u64 = 0;

    loop {
        if list.returns_left == 0 {
            return Verdict::Linearizable;
        }
        steps_taken += 1;
        if steps_taken.is_multiple_of(1024) && started.elapsed() > budget {
            return Verdict::Unknown;
        }
        // (The scan always stops at the first return, so it cannot run off the end while
        // returns remain; NIL is handled as a return, defensively.)
        if cursor != NIL && list.events[cursor].is_call {
            let op = list.events[cursor].op;
            if let Some(next_state) = steps[op].apply(state) {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), next_state)) {
                    stack.push((cursor, state));
                    state = next_state;
                    list.lift(cursor);
                    cursor = list.head;
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            cursor = list.next[cursor];
            continue;
        }
        // A return (or the end) whose op is not linearized: record the depth, backtrack.
        if stack.len() >= deepest.0 && cursor != NIL {
            let recent = stack[stack.len().saturating_sub(RECENT)..]
                .iter()
                .map(|(call, _)| list.events[*call].op)
                .collect();
            deepest = (stack.len(), state, list.events[cursor].op, recent);
        }
        let Some((call, before)) = stack.pop() else {
            let (depth, at_state, stuck, recent) = deepest;
            let stuck = if stuck == NIL { 0 } else { stuck };
            let stuck_op = ops[stuck].clone();
            let concurrent = ops
                .iter()
                .filter(|o| {
                    **o != &stuck_op
                        && o.invoke <= stuck_op.complete.unwrap_or(u64::MAX)
                        && o.complete.is_none_or(|c| c >= stuck_op.invoke)
                })
                .map(|o| (*o).clone())
                .collect();
            return Verdict::Violation(Counterexample {
                stuck: stuck_op,
                state: interner.value(at_state),
                linearized: depth,
                recent: recent.into_iter().map(|i| ops[i].clone()).collect(),
                concurrent,
            });
        };
        list.unlift(call);
        let op = list.events[call].op;
        linearized[op / 64] &= !(1 << (op % 64));
        state = before;
        cursor = list.next[call];
    }
}
