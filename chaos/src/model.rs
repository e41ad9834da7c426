//! The sequential specification the checker holds a key to: a register that SET
//! overwrites, GET reads, and INCR adds one to with Redis's semantics (a missing key
//! counts as 0; a value that is not a canonical integer, or an increment that would
//! overflow, is an error that leaves the value unchanged).
//!
//! The checker works on [`State`], a `Copy` form of a key's value with strings
//! interned per key, because it clones and hashes states at every step of its search.

use crate::history::{Input, Op, Outcome, Output, Value};

/// A key's value during the search: strings are numbered per key by [`Interner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Missing,
    Int(i64),
    Str(u32),
}

/// What an INCR answered, as far as the checker knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncrAnswer {
    Value(i64),
    Err,
    /// No definite answer: any result is acceptable.
    Unknown,
}

/// An operation as the model steps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A GET that returned this.
    Read(State),
    /// A SET of this (whether or not it was acknowledged: a write's answer carries no
    /// information beyond its having happened).
    Write(State),
    Incr(IncrAnswer),
}

/// Applies `op` to `state`: the state after it, or `None` if its answer is impossible
/// from `state`.
pub fn step(state: State, op: Step) -> Option<State> {
    match op {
        Step::Read(seen) => (seen == state).then_some(state),
        Step::Write(v) => Some(v),
        Step::Incr(answer) => {
            let result = match state {
                State::Missing => Some(1),
                State::Int(x) => x.checked_add(1),
                State::Str(_) => None,
            };
            match (result, answer) {
                (Some(n), IncrAnswer::Value(m)) if n == m => Some(State::Int(n)),
                (Some(n), IncrAnswer::Unknown) => Some(State::Int(n)),
                (None, IncrAnswer::Err | IncrAnswer::Unknown) => Some(state),
                _ => None,
            }
        }
    }
}

/// Numbers the strings of one key's history.
#[derive(Debug, Default)]
pub struct Interner {
    strings: Vec<String>,
}

impl Interner {
    pub fn state(&mut self, v: Option<&Value>) -> State {
        match v {
            None => State::Missing,
            Some(Value::Int(n)) => State::Int(*n),
            Some(Value::Str(s)) => match self.strings.iter().position(|x| x == s) {
                Some(i) => State::Str(i as u32),
                None => {
                    self.strings.push(s.clone());
                    State::Str((self.strings.len() - 1) as u32)
                }
            },
        }
    }

    /// The value a state stands for, for reports.
    pub fn show(&self, s: State) -> String {
        match s {
            State::Missing => "nil".to_string(),
            State::Int(n) => n.to_string(),
            State::Str(i) => format!("{:?}", self.strings[i as usize]),
        }
    }
}

/// The model's view of `op`: `None` if it cannot matter (a refused operation, or a read
/// without an answer, which took no effect and observed nothing).
pub fn to_step(op: &Op, interner: &mut Interner) -> Option<Step> {
    match (&op.input, &op.outcome) {
        (_, Outcome::Fail(_)) => None,
        (Input::Read, Outcome::Ok(Output::Read(v))) => Some(Step::Read(interner.state(v.as_ref()))),
        (Input::Read, _) => None,
        (Input::Write(v), _) => Some(Step::Write(interner.state(Some(v)))),
        (Input::Incr, Outcome::Ok(Output::Incr(n))) => Some(Step::Incr(IncrAnswer::Value(*n))),
        (Input::Incr, Outcome::Ok(Output::IncrErr)) => Some(Step::Incr(IncrAnswer::Err)),
        (Input::Incr, _) => Some(Step::Incr(IncrAnswer::Unknown)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incr_follows_redis() {
        assert_eq!(step(State::Missing, Step::Incr(IncrAnswer::Value(1))), Some(State::Int(1)));
        assert_eq!(step(State::Int(41), Step::Incr(IncrAnswer::Value(42))), Some(State::Int(42)));
        assert_eq!(step(State::Int(41), Step::Incr(IncrAnswer::Value(43))), None);
        assert_eq!(step(State::Str(0), Step::Incr(IncrAnswer::Err)), Some(State::Str(0)));
        assert_eq!(step(State::Str(0), Step::Incr(IncrAnswer::Value(1))), None);
        assert_eq!(step(State::Int(1), Step::Incr(IncrAnswer::Err)), None);
        assert_eq!(step(State::Int(i64::MAX), Step::Incr(IncrAnswer::Err)), Some(State::Int(i64::MAX)));
        assert_eq!(step(State::Int(5), Step::Incr(IncrAnswer::Unknown)), Some(State::Int(6)));
        assert_eq!(step(State::Str(3), Step::Incr(IncrAnswer::Unknown)), Some(State::Str(3)));
    }

    #[test]
    fn reads_must_see_the_state_and_writes_replace_it() {
        assert_eq!(step(State::Int(1), Step::Read(State::Int(1))), Some(State::Int(1)));
        assert_eq!(step(State::Int(1), Step::Read(State::Missing)), None);
        assert_eq!(step(State::Missing, Step::Write(State::Str(2))), Some(State::Str(2)));
    }

    #[test]
    fn strings_are_interned_per_key() {
        let mut i = Interner::default();
        let a = i.state(Some(&Value::Str("a".into())));
        let b = i.state(Some(&Value::Str("b".into())));
        assert_ne!(a, b);
        assert_eq!(i.state(Some(&Value::Str("a".into()))), a);
        assert_eq!(i.show(b), "\"b\"");
        assert_eq!(i.state(None), State::Missing);
    }
}
