//! The recorded history of a chaos run: every client operation with the time it was
//! invoked and the time its answer came back (or the client gave up), and what the
//! answer was. Saved as JSON lines, one operation a line, so that a failed run can be
//! checked again (`skiff-chaos check FILE`) or read by hand.

use std::fmt;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// A value held by a key, as the checker's register model sees it: an integer (which
/// INCR can add to) or any other string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    Int(i64),
    Str(String),
}

impl Value {
    /// How a stored string reads back: Redis INCR accepts a canonical base-10 i64.
    pub fn from_bytes(b: &[u8]) -> Value {
        match std::str::from_utf8(b) {
            Ok(s) => match s.parse::<i64>() {
                // Only the canonical spelling is an integer to INCR ("+5", "05" are not).
                Ok(n) if n.to_string() == s => Value::Int(n),
                _ => Value::Str(s.to_string()),
            },
            Err(_) => Value::Str(String::from_utf8_lossy(b).into_owned()),
        }
    }

    /// The bytes a SET sends.
    pub fn to_wire(&self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Str(s) => s.clone(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// GET
    Read,
    /// SET to a value no other operation writes.
    Write(Value),
    /// INCR
    Incr,
}

/// A definite answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// GET: the value, or none (nil).
    Read(Option<Value>),
    /// SET: +OK.
    Write,
    /// INCR: the new value.
    Incr(i64),
    /// INCR answered with an error from the state machine (the value is not an
    /// integer, or would overflow): it observed the state and changed nothing.
    IncrErr,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Answered: it took effect (writes) or observed this (reads).
    Ok(Output),
    /// Refused with an answer that promises it took no effect (`-TRYAGAIN`,
    /// `-OVERLOADED`, or a connection that could not be made).
    Fail(String),
    /// No answer that says: a timeout, `-TIMEOUT`, a closed connection. A write may
    /// take effect at any time after its invocation, or never.
    Unknown(String),
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique in the history, in invocation order per client.
    pub id: u64,
    /// The client (worker thread) that ran it; a client runs one operation at a time.
    pub client: u32,
    /// The node the request was sent to.
    pub node: u64,
    pub key: String,
    pub input: Input,
    /// Nanoseconds since the run started, when the request was about to be sent.
    pub invoke_ns: u64,
    /// Nanoseconds since the run started, when the answer arrived or the client gave up.
    /// For an unknown outcome the checker treats the completion as never.
    pub complete_ns: u64,
    pub outcome: Outcome,
}

impl Op {
    /// Whether this operation can change the state (a write or increment that was not
    /// definitely refused).
    pub fn may_mutate(&self) -> bool {
        !matches!(self.input, Input::Read) && !matches!(self.outcome, Outcome::Fail(_))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.input {
            Input::Read => "GET".to_string(),
            Input::Write(v) => format!("SET {v}"),
            Input::Incr => "INCR".to_string(),
        };
        let how = match &self.outcome {
            Outcome::Ok(Output::Read(Some(v))) => format!("-> {v}"),
            Outcome::Ok(Output::Read(None)) => "-> nil".to_string(),
            Outcome::Ok(Output::Write) => "-> OK".to_string(),
            Outcome::Ok(Output::Incr(n)) => format!("-> {n}"),
            Outcome::Ok(Output::IncrErr) => "-> ERR (not an integer)".to_string(),
            Outcome::Fail(r) => format!("failed: {r}"),
            Outcome::Unknown(r) => format!("unknown: {r}"),
        };
        write!(
            f,
            "op {} client {} node {} [{:.4}s .. {:.4}s] {} {} {}",
            self.id,
            self.client,
            self.node,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9,
            self.key,
            what,
            how
        )
    }
}

/// Writes `ops` as JSON lines.
pub fn write_jsonl(ops: &[Op], out: &mut impl Write) -> std::io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut *out, op)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads a history written by [`write_jsonl`].
pub fn read_jsonl(input: impl BufRead) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_incr_sees_them() {
        assert_eq!(Value::from_bytes(b"42"), Value::Int(42));
        assert_eq!(Value::from_bytes(b"-7"), Value::Int(-7));
        assert_eq!(Value::from_bytes(b"+5"), Value::Str("+5".into()));
        assert_eq!(Value::from_bytes(b"05"), Value::Str("05".into()));
        assert_eq!(Value::from_bytes(b"s12"), Value::Str("s12".into()));
        assert_eq!(Value::Int(3).to_wire(), "3");
    }

    #[test]
    fn histories_round_trip_through_json_lines() {
        let ops = vec![
            Op {
                id: 1,
                client: 0,
                node: 2,
                key: "k".into(),
                input: Input::Write(Value::Str("s1".into())),
                invoke_ns: 5,
                complete_ns: 9,
                outcome: Outcome::Unknown("timeout".into()),
            },
            Op {
                id: 2,
                client: 1,
                node: 1,
                key: "k".into(),
                input: Input::Read,
                invoke_ns: 6,
                complete_ns: 10,
                outcome: Outcome::Ok(Output::Read(Some(Value::Int(4)))),
            },
        ];
        let mut buf = Vec::new();
        write_jsonl(&ops, &mut buf).unwrap();
        assert_eq!(read_jsonl(&buf[..]).unwrap(), ops);
    }
}
