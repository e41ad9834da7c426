//! The client side of a run: workers that send GET, SET and INCR over a small, rotating
//! set of keys, each on its own blocking connection with a deadline per request, and
//! record every operation with its invocation and completion times.
//!
//! Keys rotate: each of the `keys` active slots takes `ops_per_key` operations and is
//! then replaced by a fresh key (as Jepsen's independent keys do). Contention stays
//! high, and every key's history stays short enough for the checker to decide.
//!
//! Written values are unique: integers `n * VALUE_STRIDE` (so INCR works on them, and a
//! value reached by INCRs from one write is never another write's value) and, now and
//! then, strings `s<n>` (on which INCR is an error).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use skiff_net::RespValue;

use crate::client::{ClientError, Resp};
use crate::history::{Input, Op, Outcome, Output, Value};
use crate::rng::Rng;

/// Written integers are multiples of this; a key sees far fewer INCRs than this in its
/// life ([`Keys::new`] checks it), so values reached by INCR never meet another write's.
pub const VALUE_STRIDE: i64 = 1_000_000;

/// Share of writes that write a string instead of an integer, per mille.
const STRING_WRITES_PER_MILLE: u64 = 100;

/// The operation mix, per mille: reads, then writes; the rest are INCRs.
const READS_PER_MILLE: u64 = 450;
const WRITES_PER_MILLE: u64 = 350;

/// The active keys and every key used so far.
#[derive(Debug)]
pub struct Keys {
    slots: Vec<(String, u64)>,
    ops_per_key: u64,
    next: u64,
    all: Vec<String>,
}

impl Keys {
    /// # Panics
    /// If `keys` is 0, or `ops_per_key` could let INCRs reach the next written value.
    pub fn new(keys: usize, ops_per_key: u64) -> Keys {
        assert!(keys > 0, "at least one key");
        assert!((ops_per_key as i64) < VALUE_STRIDE, "ops_per_key must stay below {VALUE_STRIDE}");
        let mut k = Keys { slots: Vec::new(), ops_per_key, next: 0, all: Vec::new() };
        for _ in 0..keys {
            let name = k.fresh();
            k.slots.push((name, 0));
        }
        k
    }

    fn fresh(&mut self) -> String {
        self.next += 1;
        let name = format!("k{}", self.next);
        self.all.push(name.clone());
        name
    }

    /// A key for the next operation.
    pub fn pick(&mut self, rng: &mut Rng) -> String {
        let i = rng.below(self.slots.len() as u64) as usize;
        let name = self.slots[i].0.clone();
        self.slots[i].1 += 1;
        if self.slots[i].1 >= self.ops_per_key {
            self.slots[i] = (self.fresh(), 0);
        }
        name
    }

    /// Every key handed out so far.
    pub fn all(&self) -> Vec<String> {
        self.all.clone()
    }
}

/// What the workers share.
#[derive(Debug)]
pub struct Shared {
    pub t0: Instant,
    pub clients: Vec<String>,
    pub stop: AtomicBool,
    pub keys: Mutex<Keys>,
    next_op: AtomicU64,
    next_value: AtomicU64,
}

impl Shared {
    pub fn new(t0: Instant, clients: Vec<String>, keys: Keys) -> Shared {
        Shared {
            t0,
            clients,
            stop: AtomicBool::new(false),
            keys: Mutex::new(keys),
            next_op: AtomicU64::new(0),
            next_value: AtomicU64::new(0),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// A value no other write writes.
    pub fn unique_value(&self, rng: &mut Rng) -> Value {
        let n = self.next_value.fetch_add(1, Ordering::Relaxed) + 1;
        if rng.chance(STRING_WRITES_PER_MILLE) {
            Value::Str(format!("s{n}"))
        } else {
            Value::Int(n as i64 * VALUE_STRIDE)
        }
    }

    pub fn op_id(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }
}

/// Sends one operation on `conn` and records it. Returns the operation, and whether the
/// connection is still usable (it is not after any error without a reply).
pub fn execute(
    sh: &Shared,
    conn: &mut Resp,
    client: u32,
    node: u64,
    key: &str,
    input: Input,
    timeout: Duration,
) -> (Op, bool) {
    let args: Vec<String> = match &input {
        Input::Read => vec!["GET".into(), key.into()],
        Input::Write(v) => vec!["SET".into(), key.into(), v.to_wire()],
        Input::Incr => vec!["INCR".into(), key.into()],
    };
    let id = sh.op_id();
    let invoke_ns = sh.now_ns();
    let reply = conn.call(&args, timeout);
    let complete_ns = sh.now_ns();
    let usable = reply.is_ok();
    let outcome = classify(&input, reply);
    (Op { id, client, node, key: key.to_string(), input, invoke_ns, complete_ns, outcome }, usable)
}

/// What a reply (or its absence) says about the operation.
///
/// `-TRYAGAIN` and `-OVERLOADED` promise that the request was never proposed
/// (docs/operating.md, "Errors clients can get"): a failure the checker holds the node
/// to. Anything else without a definite answer may have taken effect.
pub fn classify(input: &Input, reply: Result<RespValue, ClientError>) -> Outcome {
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return Outcome::Unknown(e.to_string()),
    };
    let err_text = |e: &[u8]| String::from_utf8_lossy(e).into_owned();
    match (input, reply) {
        (Input::Read, RespValue::Bulk(b)) => Outcome::Ok(Output::Read(Some(Value::from_bytes(&b)))),
        (Input::Read, RespValue::NullBulk) => Outcome::Ok(Output::Read(None)),
        (Input::Write(_), RespValue::Simple(s)) if &s[..] == b"OK" => Outcome::Ok(Output::Write),
        (Input::Incr, RespValue::Integer(n)) => Outcome::Ok(Output::Incr(n)),
        (Input::Incr, RespValue::Error(e))
            if e.starts_with(b"ERR value is not an integer")
                || e.starts_with(b"ERR increment or decrement would overflow") =>
        {
            Outcome::Ok(Output::IncrErr)
        }
        (_, RespValue::Error(e)) if e.starts_with(b"TRYAGAIN") || e.starts_with(b"OVERLOADED") => {
            Outcome::Fail(err_text(&e))
        }
        // A read that failed observed nothing, whatever the reason.
        (Input::Read, RespValue::Error(e)) => Outcome::Fail(err_text(&e)),
        (_, RespValue::Error(e)) => Outcome::Unknown(err_text(&e)),
        (_, other) => Outcome::Unknown(format!("unexpected reply {other:?}")),
    }
}

/// Parameters of one worker.
#[derive(Clone, Debug)]
pub struct WorkerParams {
    pub client: u32,
    pub seed: u64,
    pub timeout: Duration,
    /// Most time between two operations of this worker.
    pub think: Duration,
}

/// Runs until `sh.stop`; returns the worker's operations.
pub fn worker(sh: &Shared, p: &WorkerParams) -> Vec<Op> {
    let mut rng = Rng::fork(p.seed, 1000 + u64::from(p.client));
    let nodes = sh.clients.len();
    // Workers are spread over the nodes and move on to the next one when theirs fails.
    let mut target = p.client as usize % nodes;
    let mut conn: Option<Resp> = None;
    let mut ops = Vec::new();
    while !sh.stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Resp::connect(&sh.clients[target]) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    target = (target + 1) % nodes;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let key = sh.keys.lock().unwrap_or_else(|e| e.into_inner()).pick(&mut rng);
        let input = match rng.below(1000) {
            x if x < READS_PER_MILLE => Input::Read,
            x if x < READS_PER_MILLE + WRITES_PER_MILLE => Input::Write(sh.unique_value(&mut rng)),
            _ => Input::Incr,
        };
        let (op, usable) = execute(sh, c, p.client, target as u64 + 1, &key, input, p.timeout);
        let refused = matches!(op.outcome, Outcome::Fail(_));
        ops.push(op);
        if !usable {
            conn = None;
            target = (target + 1) % nodes;
        }
        let think = p.think.as_micros() as u64;
        let pause = if refused { think.max(20_000) } else { rng.below(think + 1) };
        std::thread::sleep(Duration::from_micros(pause));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn err(s: &str) -> Result<RespValue, ClientError> {
        Ok(RespValue::Error(Bytes::copy_from_slice(s.as_bytes())))
    }

    #[test]
    fn replies_are_classified_by_what_they_promise() {
        let w = Input::Write(Value::Int(5));
        assert_eq!(classify(&w, Ok(RespValue::Simple(Bytes::from_static(b"OK")))), Outcome::Ok(Output::Write));
        assert!(matches!(classify(&w, err("TRYAGAIN no leader is known; retry")), Outcome::Fail(_)));
        assert!(matches!(classify(&w, err("OVERLOADED too many writes in flight")), Outcome::Fail(_)));
        assert!(matches!(classify(&w, err("TIMEOUT the write was not applied in time")), Outcome::Unknown(_)));
        assert!(matches!(classify(&w, err("ERR the node stopped on a storage error")), Outcome::Unknown(_)));
        assert!(matches!(classify(&w, Err(ClientError::Closed)), Outcome::Unknown(_)));
        assert_eq!(classify(&Input::Incr, Ok(RespValue::Integer(7))), Outcome::Ok(Output::Incr(7)));
        assert_eq!(
            classify(&Input::Incr, err("ERR value is not an integer or out of range")),
            Outcome::Ok(Output::IncrErr)
        );
        assert!(matches!(classify(&Input::Incr, err("TIMEOUT x")), Outcome::Unknown(_)));
        assert_eq!(
            classify(&Input::Read, Ok(RespValue::Bulk(Bytes::from_static(b"s3")))),
            Outcome::Ok(Output::Read(Some(Value::Str("s3".into()))))
        );
        assert_eq!(classify(&Input::Read, Ok(RespValue::NullBulk)), Outcome::Ok(Output::Read(None)));
        assert!(matches!(classify(&Input::Read, err("TIMEOUT the read")), Outcome::Fail(_)));
    }

    #[test]
    fn keys_rotate_after_their_share_of_operations() {
        let mut k = Keys::new(2, 3);
        let mut rng = Rng::new(1);
        for _ in 0..30 {
            k.pick(&mut rng);
        }
        assert!(k.all().len() >= 10, "{:?}", k.all());
    }
}
