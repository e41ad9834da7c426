//! Histories for the checker's own tests: random concurrent histories produced by a
//! sequential register (always linearizable), the same with one injected anomaly placed
//! where it is certain to be visible, tiny random histories, and a brute-force
//! checker to compare against on those.

use std::collections::BTreeMap;

use crate::history::{Input, Op, Outcome, Output, Value};
use crate::model::{Interner, State, Step, step, to_step};
use crate::rng::Rng;

/// Written integers are multiples of this, so that a value reached by INCRs from one
/// write can never be another write's value.
pub const STRIDE: i64 = 1_000_000;

/// An anomaly a faulty store could show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// A read returns a value overwritten before the read began.
    StaleRead,
    /// An acknowledged write never takes effect.
    LostWrite,
    /// One INCR is applied twice.
    DuplicateIncr,
}

/// Parameters of a generated history.
#[derive(Clone, Debug)]
pub struct Gen {
    pub seed: u64,
    pub clients: u32,
    pub ops: usize,
    pub keys: usize,
    /// Share of operations whose outcome the client never learns.
    pub unknown_per_mille: u64,
    /// Share refused outright (no effect).
    pub fail_per_mille: u64,
}

impl Default for Gen {
    fn default() -> Gen {
        Gen { seed: 0, clients: 4, ops: 200, keys: 1, unknown_per_mille: 50, fail_per_mille: 30 }
    }
}

/// An operation before its answer is known: when it takes effect (if it does).
struct Planned {
    op: Op,
    /// When it takes effect; `None`: never.
    at: Option<u64>,
    definite: bool,
}

impl Gen {
    /// A history, with `anomaly` injected; `None` if this seed offers no place where the
    /// anomaly is certain to make the history non-linearizable.
    pub fn history(&self, anomaly: Option<Anomaly>) -> Option<Vec<Op>> {
        let mut rng = Rng::new(self.seed);
        let mut plan: Vec<Planned> = Vec::with_capacity(self.ops);
        let mut next_value = 1i64;
        let per_client = self.ops.div_ceil(self.clients as usize);
        for client in 0..self.clients {
            let mut t = rng.range(0, 20);
            for _ in 0..per_client {
                let invoke = t + rng.range(0, 20);
                let dur = rng.range(1, 60);
                let complete = invoke + dur;
                let key = format!("k{}", rng.below(self.keys as u64));
                let input = match rng.below(100) {
                    0..40 => Input::Read,
                    40..75 => {
                        next_value += 1;
                        if rng.chance(100) {
                            Input::Write(Value::Str(format!("s{next_value}")))
                        } else {
                            Input::Write(Value::Int(next_value * STRIDE))
                        }
                    }
                    _ => Input::Incr,
                };
                let (outcome, at, definite) = if rng.chance(self.unknown_per_mille) {
                    // It may take effect, even after the client gave up, or never.
                    let at = rng.chance(500).then(|| invoke + rng.range(0, 3 * dur));
                    (Outcome::Unknown("timeout".into()), at, false)
                } else if rng.chance(self.fail_per_mille) {
                    (Outcome::Fail("TRYAGAIN".into()), None, false)
                } else {
                    (Outcome::Ok(Output::Write), Some(invoke + rng.range(0, dur)), true)
                };
                let id = plan.len() as u64;
                plan.push(Planned {
                    op: Op { id, client, node: 1, key, input, invoke_ns: invoke, complete_ns: complete, outcome },
                    at,
                    definite,
                });
                t = complete;
            }
        }
        match anomaly {
            None => Some(simulate(&plan, None, None)),
            Some(Anomaly::StaleRead) => {
                let mut ops = simulate(&plan, None, None);
                inject_stale_read(&mut rng, &mut ops).then_some(ops)
            }
            // Try each candidate until one is certain to be visible.
            Some(Anomaly::LostWrite) => {
                candidates(&mut rng, &plan, |p| p.definite && matches!(p.op.input, Input::Write(_)))
                    .into_iter()
                    .map(|w| (w, simulate(&plan, Some(w), None)))
                    .find(|(w, ops)| lost_write_visible(ops, *w))
                    .map(|(_, ops)| ops)
            }
            Some(Anomaly::DuplicateIncr) => {
                candidates(&mut rng, &plan, |p| p.definite && matches!(p.op.input, Input::Incr))
                    .into_iter()
                    .map(|i| (i, simulate(&plan, None, Some(i))))
                    .find(|(i, ops)| duplicate_visible(ops, *i))
                    .map(|(_, ops)| ops)
            }
        }
    }
}

/// Runs the plan through the sequential register in the order the operations take
/// effect, leaving out `skip` (acknowledged all the same) and applying `twice` twice.
fn simulate(plan: &[Planned], skip: Option<usize>, twice: Option<usize>) -> Vec<Op> {
    let mut ops: Vec<Op> = plan.iter().map(|p| p.op.clone()).collect();
    let mut order: Vec<usize> = (0..plan.len()).filter(|&i| plan[i].at.is_some() && Some(i) != skip).collect();
    order.sort_by_key(|&i| (plan[i].at, i));
    let mut state: BTreeMap<String, Value> = BTreeMap::new();
    for i in order {
        let times = if Some(i) == twice { 2 } else { 1 };
        let mut out = Output::Write;
        for n in 0..times {
            let o = apply(&mut state, &ops[i].key, &ops[i].input);
            if n == 0 {
                out = o;
            }
        }
        if plan[i].definite {
            ops[i].outcome = Outcome::Ok(out);
        }
    }
    ops
}

/// The operations `f` accepts, in a random order.
fn candidates(rng: &mut Rng, plan: &[Planned], f: impl Fn(&Planned) -> bool) -> Vec<usize> {
    let mut c: Vec<usize> = (0..plan.len()).filter(|&i| f(&plan[i])).collect();
    rng.shuffle(&mut c);
    c
}

/// The sequential register, written independently of [`crate::model`].
fn apply(state: &mut BTreeMap<String, Value>, key: &str, input: &Input) -> Output {
    match input {
        Input::Read => Output::Read(state.get(key).cloned()),
        Input::Write(v) => {
            state.insert(key.to_string(), v.clone());
            Output::Write
        }
        Input::Incr => match state.get(key) {
            None => {
                state.insert(key.to_string(), Value::Int(1));
                Output::Incr(1)
            }
            Some(Value::Int(x)) if *x < i64::MAX => {
                let n = x + 1;
                state.insert(key.to_string(), Value::Int(n));
                Output::Incr(n)
            }
            Some(_) => Output::IncrErr,
        },
    }
}

fn is_ok(op: &Op) -> bool {
    matches!(op.outcome, Outcome::Ok(_))
}

/// Makes a read return a value overwritten before it began: writes W0, W1 and read R,
/// all answered, with W0 completed before W1 began and W1 completed before R began.
fn inject_stale_read(rng: &mut Rng, ops: &mut [Op]) -> bool {
    let mut cands = Vec::new();
    for r in ops.iter().filter(|o| is_ok(o) && o.input == Input::Read) {
        for w1 in ops.iter().filter(|o| is_ok(o) && o.key == r.key && o.complete_ns < r.invoke_ns) {
            if !matches!(w1.input, Input::Write(_)) {
                continue;
            }
            for w0 in ops.iter().filter(|o| is_ok(o) && o.key == r.key && o.complete_ns < w1.invoke_ns) {
                if let Input::Write(v) = &w0.input {
                    cands.push((r.id, v.clone()));
                }
            }
        }
    }
    if cands.is_empty() {
        return false;
    }
    let (rid, v) = rng.pick(&cands).clone();
    ops[rid as usize].outcome = Outcome::Ok(Output::Read(Some(v)));
    true
}

/// A read that began after the lost write W completed returns the value of a write P
/// that completed before W began: every order has P, W, read, in that order.
fn lost_write_visible(ops: &[Op], w: usize) -> bool {
    let w = &ops[w];
    ops.iter().any(|r| {
        let Outcome::Ok(Output::Read(Some(v))) = &r.outcome else { return false };
        r.key == w.key
            && r.invoke_ns > w.complete_ns
            && ops.iter().any(|p| {
                is_ok(p) && p.key == w.key && p.input == Input::Write(v.clone()) && p.complete_ns < w.invoke_ns
            })
    })
}

/// An observation O after the doubled INCR whose value x is reachable from its base
/// write P (the only source of values in [b, b + STRIDE)) only by more INCRs than can
/// fit between P and O in any order.
fn duplicate_visible(ops: &[Op], i: usize) -> bool {
    let inc = &ops[i];
    let never = u64::MAX;
    let ret = |o: &Op| if is_ok(o) { o.complete_ns } else { never };
    ops.iter().any(|o| {
        if o.key != inc.key || o.invoke_ns <= inc.complete_ns {
            return false;
        }
        let x = match &o.outcome {
            Outcome::Ok(Output::Read(Some(Value::Int(x)))) => *x,
            Outcome::Ok(Output::Incr(n)) => n - 1,
            _ => return false,
        };
        let b = x - x.rem_euclid(STRIDE);
        // Where the base came from: a write of b, or the missing key at the start.
        let base_invoke = if b == 0 {
            0
        } else {
            match ops.iter().find(|p| p.key == inc.key && p.input == Input::Write(Value::Int(b))) {
                Some(p) if !matches!(p.outcome, Outcome::Fail(_)) => p.invoke_ns,
                _ => return false,
            }
        };
        let room = ops
            .iter()
            .filter(|j| {
                j.id != o.id
                    && j.key == inc.key
                    && j.input == Input::Incr
                    && !matches!(j.outcome, Outcome::Fail(_))
                    && ret(j) >= base_invoke
                    && j.invoke_ns <= ret(o)
            })
            .count() as i64;
        x - b > room
    })
}

/// A history of at most seven operations on one key from at most three clients, with
/// answers from a sequential run, one of them altered half the time.
pub fn small_random(rng: &mut Rng) -> Vec<Op> {
    let n = rng.range(2, 7) as usize;
    let clients = rng.range(1, 3) as u32;
    let g = Gen { seed: rng.next_u64(), clients, ops: n, keys: 1, unknown_per_mille: 150, fail_per_mille: 50 };
    let mut ops = g.history(None).expect("no anomaly");
    if rng.chance(500) {
        let i = rng.below(ops.len() as u64) as usize;
        let values: Vec<Value> =
            ops.iter().filter_map(|o| if let Input::Write(v) = &o.input { Some(v.clone()) } else { None }).collect();
        let out = match &ops[i].input {
            Input::Read => {
                let v = if values.is_empty() || rng.chance(300) {
                    rng.chance(500).then(|| Value::Int(rng.range(1, 3) as i64))
                } else {
                    Some(rng.pick(&values).clone())
                };
                Some(Output::Read(v))
            }
            Input::Incr => Some(if rng.chance(200) {
                Output::IncrErr
            } else {
                let base = values.iter().find_map(|v| if let Value::Int(b) = v { Some(*b) } else { None }).unwrap_or(0);
                Output::Incr(base * i64::from(rng.chance(500)) + rng.range(1, 3) as i64)
            }),
            Input::Write(_) => None,
        };
        if let Some(out) = out {
            ops[i].outcome = Outcome::Ok(out);
        }
    }
    ops
}

/// Whether some order of `ops` respects real time and the register: every operation
/// with a definite answer placed, each unknown one placed or left out. Tries every
/// order; for small histories only.
pub fn brute_force(ops: &[Op]) -> bool {
    let mut interner = Interner::default();
    let items: Vec<(Step, u64, u64, bool)> = ops
        .iter()
        .filter_map(|o| {
            let s = to_step(o, &mut interner)?;
            let definite = is_ok(o);
            Some((s, o.invoke_ns, if definite { o.complete_ns } else { u64::MAX }, definite))
        })
        .collect();
    fn go(items: &[(Step, u64, u64, bool)], placed: &mut Vec<bool>, state: State) -> bool {
        if items.iter().zip(placed.iter()).all(|(it, &p)| p || !it.3) {
            return true;
        }
        for i in 0..items.len() {
            if placed[i] {
                continue;
            }
            // Every operation that completed before this one began must come first.
            let blocked = (0..items.len()).any(|j| j != i && !placed[j] && items[j].3 && items[j].2 < items[i].1);
            if blocked {
                continue;
            }
            if let Some(next) = step(state, items[i].0) {
                placed[i] = true;
                if go(items, placed, next) {
                    return true;
                }
                placed[i] = false;
            }
        }
        false
    }
    let mut placed = vec![false; items.len()];
    go(&items, &mut placed, State::Missing)
}
