//! The linearizability checker: is there an order of the recorded operations that
//! respects real time (an operation that completed before another was invoked comes
//! first) and in which every answer is what the register model ([`crate::model`])
//! gives?
//!
//! The search is Wing & Gong's, with Lowe's memoization, as Porcupine implements it:
//! the operations' invocations and completions form one time-ordered list; the search
//! walks it, linearizing an operation at its invocation when the model accepts its
//! answer, and backtracking when it reaches the completion of an operation it has not
//! linearized. A (set of linearized operations, state) pair already explored is never
//! explored again.
//!
//! - Keys are independent registers, so each key's operations are checked on their own
//!   (P-compositionality: a history is linearizable iff every key's sub-history is).
//! - An operation with an unknown outcome may take effect at any time after its
//!   invocation, or never: its completion is taken as "never", and the search succeeds
//!   as soon as every operation with a definite answer is linearized. A write of a value
//!   nothing ever observed is dropped before the search (it cannot explain any answer,
//!   and leaving it out is always a valid choice), which keeps timeouts cheap.
//! - The search is bounded: past `steps_max_per_key` steps a key is reported as too
//!   hard to decide, never as linearizable.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::history::{Op, Outcome};
use crate::model::{IncrAnswer, Interner, State, Step, step, to_step};

/// Default search budget per key. A key's history of a few hundred operations, with the
/// concurrency of a chaos run, takes thousands of steps; this leaves room for keys that
/// collected many unknown outcomes during a partition, and bounds a pathological one
/// to seconds.
pub const STEPS_MAX_PER_KEY_DEFAULT: u64 = 20_000_000;

/// How many operations of the best partial order a violation report shows.
const REPORT_PREFIX_OPS: usize = 10;

/// Options of [`check`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Search steps allowed per key before it is reported as too hard.
    pub steps_max_per_key: u64,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions { steps_max_per_key: STEPS_MAX_PER_KEY_DEFAULT }
    }
}

/// The overall answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// At least one key has no valid order.
    Violation,
    /// No violation found, but some key exceeded the search budget: not a pass.
    Unknown,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Linearizable => "linearizable",
            Verdict::Violation => "NOT linearizable",
            Verdict::Unknown => "unknown (search budget exhausted)",
        })
    }
}

/// Why a key's history is not linearizable.
#[derive(Clone, Debug)]
pub struct Violation {
    pub key: String,
    /// Operations of this key the search considered.
    pub ops: usize,
    /// The most operations any valid order reached.
    pub linearized_max: usize,
    /// An operation whose completion the best order could not get past without it,
    /// and for which no valid point could be found.
    pub stuck: Op,
    /// The tail of the best valid order found: each operation and the state after it.
    pub best_tail: Vec<(Op, String)>,
    /// Operations whose interval overlaps the stuck one's.
    pub concurrent: Vec<Op>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {}: no valid order of its {} operations; the longest valid order covers {} of them and \
             cannot get past the completion of:",
            self.key, self.ops, self.linearized_max
        )?;
        writeln!(f, "    {}", self.stuck)?;
        writeln!(f, "  end of the longest valid order (operation, state after it):")?;
        for (op, s) in &self.best_tail {
            writeln!(f, "    {op}   => {s}")?;
        }
        writeln!(f, "  operations concurrent with the stuck one:")?;
        if self.concurrent.is_empty() {
            writeln!(f, "    (none)")?;
        }
        for op in &self.concurrent {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub keys: usize,
    /// Operations the search considered (refused operations and unanswered reads have
    /// no effect and are left out).
    pub ops: usize,
    /// Writes with unknown outcomes dropped because nothing observed their value.
    pub unobserved_unknown_writes: usize,
    pub violations: Vec<Violation>,
    /// Keys whose search exceeded the budget, with the steps taken.
    pub too_hard: Vec<(String, u64)>,
    /// Search steps over all keys, and the most any one key took.
    pub steps: u64,
    pub steps_max: u64,
}

impl CheckReport {
    pub fn verdict(&self) -> Verdict {
        if !self.violations.is_empty() {
            Verdict::Violation
        } else if !self.too_hard.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Linearizable
        }
    }
}

/// Checks a whole history, key by key.
pub fn check(history: &[Op], opts: &CheckOptions) -> CheckReport {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = CheckReport { keys: by_key.len(), ..CheckReport::default() };
    for (key, ops) in by_key {
        let r = check_key(key, &ops, opts);
        report.ops += r.ops;
        report.unobserved_unknown_writes += r.pruned;
        report.steps += r.steps;
        report.steps_max = report.steps_max.max(r.steps);
        match r.result {
            KeyResult::Linearizable => {}
            KeyResult::Violation(v) => report.violations.push(*v),
            KeyResult::TooHard => report.too_hard.push((key.to_string(), r.steps)),
        }
    }
    report
}

enum KeyResult {
    Linearizable,
    Violation(Box<Violation>),
    TooHard,
}

struct KeyCheck {
    result: KeyResult,
    ops: usize,
    pruned: usize,
    steps: u64,
}

/// One operation as the search sees it.
struct Call<'a> {
    op: &'a Op,
    step: Step,
    /// Invocation and completion times; `u64::MAX` completion: never (unknown outcome).
    call: u64,
    ret: u64,
    definite: bool,
}

/// No list node.
const NIL: usize = usize::MAX;

/// Checks one key's operations.
fn check_key(key: &str, ops: &[&Op], opts: &CheckOptions) -> KeyCheck {
    let mut interner = Interner::default();
    let mut calls: Vec<Call> = ops
        .iter()
        .filter_map(|op| {
            let step = to_step(op, &mut interner)?;
            let definite = matches!(op.outcome, Outcome::Ok(_));
            Some(Call { op, step, call: op.invoke_ns, ret: if definite { op.complete_ns } else { u64::MAX }, definite })
        })
        .collect();
    let before = calls.len();
    drop_unobserved_unknown_writes(&mut calls);
    let pruned = before - calls.len();
    bound_observed_unknown_writes(&mut calls);
    let n = calls.len();
    // INCRs with unknown outcomes are interchangeable once invoked: the search counts
    // how many it has linearized instead of which (see `symmetric`).
    let symmetric: Vec<bool> = calls.iter().map(|c| !c.definite && matches!(c.step, Step::Incr(_))).collect();

    // The time-ordered list of invocations and completions. At equal times an
    // invocation goes first: the two operations are then treated as concurrent, the
    // permissive reading of a tie.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, c) in calls.iter().enumerate() {
        events.push((c.call, 0, i));
        events.push((c.ret, 1, i));
    }
    events.sort_unstable();
    // Node 0 is the head; node k + 1 is events[k].
    let nodes = events.len() + 1;
    let mut next = vec![NIL; nodes];
    let mut prev = vec![NIL; nodes];
    for k in 0..nodes {
        next[k] = if k + 1 < nodes { k + 1 } else { NIL };
        prev[k] = if k > 0 { k - 1 } else { NIL };
    }
    let mut ret_node = vec![0usize; n];
    for (k, &(_, kind, i)) in events.iter().enumerate() {
        if kind == 1 {
            ret_node[i] = k + 1;
        }
    }
    let op_of = |node: usize| events[node - 1].2;
    let is_call = |node: usize| events[node - 1].1 == 0;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        for x in [call, ret] {
            next[prev[x]] = next[x];
            if next[x] != NIL {
                prev[next[x]] = prev[x];
            }
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        for x in [ret, call] {
            next[prev[x]] = x;
            if next[x] != NIL {
                prev[next[x]] = x;
            }
        }
    };

    let definite_total = calls.iter().filter(|c| c.definite).count();
    let mut remaining = definite_total;
    let mut linearized = vec![0u64; n.div_ceil(64).max(1)];
    let mut symmetric_done = 0u32;
    let mut cache: HashSet<(Vec<u64>, u32, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = State::Missing;
    let mut cur = next[0];
    let mut steps = 0u64;
    // The best partial order seen, for the report.
    let mut best: (usize, Vec<(usize, State)>, usize) = (0, Vec::new(), NIL);

    let result = loop {
        if remaining == 0 {
            break KeyResult::Linearizable;
        }
        steps += 1;
        if steps > opts.steps_max_per_key {
            break KeyResult::TooHard;
        }
        debug_assert!(cur != NIL, "the list ends with completions, which stop the walk");
        let i = op_of(cur);
        if is_call(cur) {
            if let Some(after) = step(state, calls[i].step) {
                if symmetric[i] {
                    symmetric_done += 1;
                } else {
                    linearized[i / 64] |= 1 << (i % 64);
                }
                if cache.insert((linearized.clone(), symmetric_done, after)) {
                    stack.push((cur, state));
                    state = after;
                    lift(&mut next, &mut prev, cur, ret_node[i]);
                    if calls[i].definite {
                        remaining -= 1;
                    }
                    cur = next[0];
                    continue;
                }
                if symmetric[i] {
                    symmetric_done -= 1;
                } else {
                    linearized[i / 64] &= !(1 << (i % 64));
                }
            }
            cur = next[cur];
        } else {
            // The completion of an operation not yet linearized: the current partial
            // order cannot be extended. (An unknown operation's completion is "never";
            // it is reached only when every definite operation is linearized, which
            // ended the search above.)
            debug_assert!(calls[i].definite);
            if stack.len() > best.0 || best.2 == NIL {
                let mut states = Vec::with_capacity(stack.len());
                let mut s = state;
                for &(node, before) in stack.iter().rev() {
                    states.push((op_of(node), s));
                    s = before;
                }
                states.reverse();
                best = (stack.len(), states, i);
            }
            let Some((call, before)) = stack.pop() else {
                break KeyResult::Violation(Box::new(violation(key, &calls, &interner, &best)));
            };
            let j = op_of(call);
            state = before;
            if symmetric[j] {
                symmetric_done -= 1;
            } else {
                linearized[j / 64] &= !(1 << (j % 64));
            }
            unlift(&mut next, &mut prev, call, ret_node[j]);
            if calls[j].definite {
                remaining += 1;
            }
            cur = next[call];
        }
    };
    KeyCheck { result, ops: n, pruned, steps }
}

/// Removes writes with unknown outcomes whose value nothing could have observed.
///
/// Sound and complete: leaving an unknown write out is always allowed, and in any valid
/// order that includes such a write every later answer up to the next write is a read
/// or INCR that would have observed its value (or a value reached from it by the INCRs
/// in between); with none of those, the same order without it is valid too.
fn drop_unobserved_unknown_writes(calls: &mut Vec<Call>) {
    let incrs = calls.iter().filter(|c| matches!(c.step, Step::Incr(_))).count() as i128;
    let mut seen_ints: Vec<i64> = Vec::new();
    let mut seen_strs: HashSet<u32> = HashSet::new();
    let mut incr_error_seen = false;
    for c in calls.iter().filter(|c| c.definite) {
        match c.step {
            Step::Read(State::Int(x)) => seen_ints.push(x),
            Step::Read(State::Str(s)) => {
                seen_strs.insert(s);
            }
            // The value the INCR found.
            Step::Incr(IncrAnswer::Value(n)) => seen_ints.push(n.wrapping_sub(1)),
            Step::Incr(IncrAnswer::Err) => incr_error_seen = true,
            _ => {}
        }
    }
    seen_ints.sort_unstable();
    calls.retain(|c| {
        if c.definite {
            return true;
        }
        match c.step {
            Step::Write(State::Int(b)) => {
                // Reachable from b by at most `incrs` increments; an INCR error observes
                // an integer only at the overflow.
                let lo = seen_ints.partition_point(|&x| (x as i128) < b as i128);
                let reachable = seen_ints.get(lo).is_some_and(|&x| (x as i128) - (b as i128) <= incrs);
                reachable || (incr_error_seen && i64::MAX as i128 - b as i128 <= incrs)
            }
            Step::Write(State::Str(s)) => seen_strs.contains(&s) || incr_error_seen,
            _ => true,
        }
    });
}

/// Gives a write with an unknown outcome the completion time of the first answer that
/// could only have come from it, and makes it definite.
///
/// An answer "could only have come from" the write when its value is the write's and no
/// other write wrote that value, or (for integers) the value is reachable by INCRs from
/// the written one and from no other write's value nor from a missing key. Every valid
/// order must then place the write before that answer, so the history is linearizable
/// exactly when it is with the bound; without it, every unknown write would stay
/// pending to the end of the history and multiply the states the search explores.
fn bound_observed_unknown_writes(calls: &mut [Call]) {
    let incrs = calls.iter().filter(|c| matches!(c.step, Step::Incr(_))).count() as i128;
    // Every possible origin of an integer value: written integers, and a missing key
    // (which INCR treats as 0).
    let mut int_writers: BTreeMap<i64, usize> = BTreeMap::new();
    let mut str_writers: BTreeMap<u32, usize> = BTreeMap::new();
    for c in calls.iter() {
        match c.step {
            Step::Write(State::Int(b)) => *int_writers.entry(b).or_default() += 1,
            Step::Write(State::Str(s)) => *str_writers.entry(s).or_default() += 1,
            _ => {}
        }
    }
    *int_writers.entry(0).or_default() += 1;
    let mut bound_int: BTreeMap<i64, u64> = BTreeMap::new();
    let mut bound_str: BTreeMap<u32, u64> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.definite) {
        let seen = match c.step {
            Step::Read(State::Int(x)) => x,
            Step::Incr(IncrAnswer::Value(n)) => n.wrapping_sub(1),
            Step::Read(State::Str(s)) => {
                if str_writers.get(&s) == Some(&1) {
                    let e = bound_str.entry(s).or_insert(u64::MAX);
                    *e = (*e).min(c.ret);
                }
                continue;
            }
            _ => continue,
        };
        // The origins b with b <= seen <= b + incrs.
        let lo = (seen as i128 - incrs).max(i64::MIN as i128) as i64;
        let mut origins = int_writers.range(lo..=seen);
        if let (Some((&b, &writers)), None) = (origins.next(), origins.next())
            && writers == 1
        {
            let e = bound_int.entry(b).or_insert(u64::MAX);
            *e = (*e).min(c.ret);
        }
    }
    for c in calls.iter_mut().filter(|c| !c.definite) {
        let bound = match c.step {
            Step::Write(State::Int(b)) if b != 0 => bound_int.get(&b),
            Step::Write(State::Str(s)) => bound_str.get(&s),
            _ => None,
        };
        if let Some(&t) = bound {
            // An answer that came before the write was even sent cannot be explained.
            c.ret = t.max(c.call);
            c.definite = true;
        }
    }
}

fn violation(key: &str, calls: &[Call], interner: &Interner, best: &(usize, Vec<(usize, State)>, usize)) -> Violation {
    let (depth, order, stuck) = best;
    let stuck_call = &calls[*stuck];
    let tail_from = order.len().saturating_sub(REPORT_PREFIX_OPS);
    let mut concurrent: Vec<Op> = calls
        .iter()
        .enumerate()
        .filter(|&(j, c)| j != *stuck && c.call <= stuck_call.ret && c.ret >= stuck_call.call)
        .map(|(_, c)| c.op.clone())
        .collect();
    concurrent.sort_by_key(|o| o.invoke_ns);
    Violation {
        key: key.to_string(),
        ops: calls.len(),
        linearized_max: *depth,
        stuck: stuck_call.op.clone(),
        best_tail: order[tail_from..].iter().map(|&(j, s)| (calls[j].op.clone(), interner.show(s))).collect(),
        concurrent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Input, Output, Value};
    use crate::testgen;

    /// A hand-written operation: `client`, `[invoke, complete]`, input and outcome.
    fn op(id: u64, client: u32, t: (u64, u64), input: Input, outcome: Outcome) -> Op {
        Op { id, client, node: 1, key: "k".into(), input, invoke_ns: t.0, complete_ns: t.1, outcome }
    }
    fn w(id: u64, c: u32, t: (u64, u64), v: i64) -> Op {
        op(id, c, t, Input::Write(Value::Int(v)), Outcome::Ok(Output::Write))
    }
    fn r(id: u64, c: u32, t: (u64, u64), v: Option<i64>) -> Op {
        op(id, c, t, Input::Read, Outcome::Ok(Output::Read(v.map(Value::Int))))
    }
    fn inc(id: u64, c: u32, t: (u64, u64), v: i64) -> Op {
        op(id, c, t, Input::Incr, Outcome::Ok(Output::Incr(v)))
    }
    fn unknown(mut o: Op) -> Op {
        o.outcome = Outcome::Unknown("timeout".into());
        o
    }
    fn verdict(h: &[Op]) -> Verdict {
        check(h, &CheckOptions::default()).verdict()
    }

    #[test]
    fn hand_made_linearizable_histories_pass() {
        // Sequential.
        assert_eq!(verdict(&[w(1, 0, (0, 10), 100), r(2, 0, (20, 30), Some(100))]), Verdict::Linearizable);
        // A read concurrent with a write may see either value.
        let h = [w(1, 0, (0, 10), 100), w(2, 0, (20, 40), 200), r(3, 1, (25, 30), Some(100))];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        let h = [w(1, 0, (0, 10), 100), w(2, 0, (20, 40), 200), r(3, 1, (25, 30), Some(200))];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // Reads before any write see nil; INCR on a missing key gives 1.
        assert_eq!(
            verdict(&[r(1, 0, (0, 1), None), inc(2, 0, (2, 3), 1), r(3, 0, (4, 5), Some(1))]),
            Verdict::Linearizable
        );
        // Concurrent increments in either order.
        let h = [w(1, 0, (0, 1), 10), inc(2, 0, (2, 9), 12), inc(3, 1, (3, 8), 11), r(4, 1, (10, 11), Some(12))];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // An unknown write that took effect (observed) or did not (never observed).
        let h = [w(1, 0, (0, 1), 10), unknown(w(2, 0, (2, 3), 20)), r(3, 1, (50, 51), Some(20))];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        let h = [w(1, 0, (0, 1), 10), unknown(w(2, 0, (2, 3), 20)), r(3, 1, (50, 51), Some(10))];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // An unknown write may take effect long after its client gave up.
        let h = [
            w(1, 0, (0, 1), 10),
            unknown(w(2, 0, (2, 3), 20)),
            r(3, 1, (50, 51), Some(10)),
            r(4, 1, (60, 61), Some(20)),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // A refused write took no effect.
        let mut refused = w(2, 0, (2, 3), 20);
        refused.outcome = Outcome::Fail("TRYAGAIN".into());
        assert_eq!(verdict(&[w(1, 0, (0, 1), 10), refused, r(3, 1, (50, 51), Some(10))]), Verdict::Linearizable);
        // INCR on a string is an error that changes nothing.
        let h = [
            op(1, 0, (0, 1), Input::Write(Value::Str("s1".into())), Outcome::Ok(Output::Write)),
            op(2, 0, (2, 3), Input::Incr, Outcome::Ok(Output::IncrErr)),
            op(3, 0, (4, 5), Input::Read, Outcome::Ok(Output::Read(Some(Value::Str("s1".into()))))),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn hand_made_violations_are_found() {
        // Stale read: the write completed before the read began.
        let h = [w(1, 0, (0, 10), 100), w(2, 0, (20, 30), 200), r(3, 1, (40, 50), Some(100))];
        let rep = check(&h, &CheckOptions::default());
        assert_eq!(rep.verdict(), Verdict::Violation);
        assert_eq!(rep.violations[0].stuck.id, 3, "{}", rep.violations[0]);
        // A read of a value never written.
        assert_eq!(verdict(&[w(1, 0, (0, 10), 100), r(2, 0, (20, 30), Some(7))]), Verdict::Violation);
        // Lost acknowledged write: nil after a completed write.
        assert_eq!(verdict(&[w(1, 0, (0, 10), 100), r(2, 1, (20, 30), None)]), Verdict::Violation);
        // An increment applied twice.
        let h = [w(1, 0, (0, 1), 10), inc(2, 0, (2, 3), 11), r(3, 0, (4, 5), Some(12))];
        assert_eq!(verdict(&h), Verdict::Violation);
        // Two increments that both answered the same value.
        let h = [w(1, 0, (0, 1), 10), inc(2, 0, (2, 9), 11), inc(3, 1, (3, 8), 11)];
        assert_eq!(verdict(&h), Verdict::Violation);
        // Reads going backwards (a new value, then the old one again).
        let h = [w(1, 0, (0, 1), 10), w(2, 0, (2, 100), 20), r(3, 1, (10, 20), Some(20)), r(4, 1, (30, 40), Some(10))];
        assert_eq!(verdict(&h), Verdict::Violation);
        // A refused write that took effect after all.
        let mut refused = w(2, 0, (2, 3), 20);
        refused.outcome = Outcome::Fail("TRYAGAIN".into());
        assert_eq!(verdict(&[w(1, 0, (0, 1), 10), refused, r(3, 1, (50, 51), Some(20))]), Verdict::Violation);
        // An unknown write may happen at most once: it cannot explain a flip back.
        let h = [
            w(1, 0, (0, 1), 10),
            unknown(w(2, 0, (2, 3), 20)),
            r(3, 1, (50, 51), Some(20)),
            w(4, 1, (52, 53), 30),
            r(5, 1, (60, 61), Some(20)),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = w(1, 0, (0, 10), 100);
        a.key = "a".into();
        let mut b = r(2, 0, (20, 30), None);
        b.key = "b".into();
        let rep = check(&[a, b], &CheckOptions::default());
        assert_eq!(rep.keys, 2);
        assert_eq!(rep.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn a_search_over_budget_is_unknown_not_a_pass() {
        // Forty concurrent writes of strings with unknown outcomes, which an INCR error
        // could each explain (so none can be left out up front), then a read of a value
        // nobody wrote: proving that takes trying every subset of the writes.
        let mut h = vec![op(0, 0, (0, 1), Input::Write(Value::Str("s0".into())), Outcome::Ok(Output::Write))];
        for i in 1..=40 {
            let s = Value::Str(format!("s{i}"));
            h.push(op(i, i as u32, (10 + i, 20 + i), Input::Write(s), Outcome::Unknown("timeout".into())));
        }
        h.push(op(98, 98, (100, 101), Input::Incr, Outcome::Ok(Output::IncrErr)));
        h.push(r(99, 99, (200, 201), Some(1000)));
        let rep = check(&h, &CheckOptions { steps_max_per_key: 1_000 });
        assert_eq!(rep.verdict(), Verdict::Unknown);
        assert_eq!(rep.too_hard.len(), 1);
    }

    #[test]
    fn unobserved_unknown_writes_are_dropped_before_the_search() {
        let mut h = vec![w(0, 0, (0, 1), 5)];
        for i in 1..=200u64 {
            h.push(unknown(w(i, i as u32, (10, 20), 1_000 * i as i64)));
        }
        h.push(r(1000, 999, (30, 40), Some(5)));
        let rep = check(&h, &CheckOptions::default());
        assert_eq!(rep.verdict(), Verdict::Linearizable);
        assert_eq!(rep.unobserved_unknown_writes, 200);
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let mut rng = crate::rng::Rng::new(7);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..3_000 {
            let h = testgen::small_random(&mut rng);
            let expected = testgen::brute_force(&h);
            let got = verdict(&h);
            assert_eq!(got == Verdict::Linearizable, expected, "checker disagrees on {h:#?}");
            if expected { yes += 1 } else { no += 1 }
        }
        assert!(yes > 300 && no > 300, "both kinds were exercised: {yes} linearizable, {no} not");
    }

    #[test]
    fn random_histories_from_the_sequential_model_pass() {
        for seed in 0..40 {
            let keys = 1 + (seed % 3) as usize;
            let g = testgen::Gen { seed, clients: 6, ops: 400, keys, unknown_per_mille: 80, ..testgen::Gen::default() };
            let h = g.history(None).expect("no anomaly requested");
            let rep = check(&h, &CheckOptions::default());
            assert_eq!(
                rep.verdict(),
                Verdict::Linearizable,
                "seed {seed}: {:?}",
                rep.violations.first().map(|v| v.to_string())
            );
        }
    }

    #[test]
    fn injected_anomalies_are_rejected() {
        for anomaly in [testgen::Anomaly::StaleRead, testgen::Anomaly::LostWrite, testgen::Anomaly::DuplicateIncr] {
            let mut found = 0;
            for seed in 0..200 {
                let g = testgen::Gen { seed, clients: 5, ops: 300, unknown_per_mille: 30, ..testgen::Gen::default() };
                // `None`: this history offered no place where the anomaly is certain to
                // be visible; another seed will.
                let Some(h) = g.history(Some(anomaly)) else { continue };
                let rep = check(&h, &CheckOptions::default());
                assert_eq!(rep.verdict(), Verdict::Violation, "{anomaly:?} seed {seed} was accepted");
                found += 1;
            }
            assert!(found >= 50, "{anomaly:?}: only {found} seeds produced a certain anomaly");
        }
    }
}
