//! The key-value state machine: the write commands as they are replicated in the log
//! (their byte encoding, tagged with the request that proposed them), applying them, and
//! the reads served from the applied state.
//!
//! # Entry payload (format 1)
//!
//! ```text
//! byte  0       format: 1
//! bytes 1..9    origin node id, u64 LE   (the node whose client is waiting, 0: none)
//! bytes 9..17   origin request id, u64 LE (unique per origin node and incarnation)
//! byte  17      opcode: 1 SET, 2 DEL, 3 INCRBY, 4 MSET
//! then, by opcode (str = u32 LE length, then the bytes):
//!   SET     flags u8 (0 always, 1 only if absent (NX), 2 only if present (XX)), key str, value str
//!   DEL     count u32, count x key str
//!   INCRBY  delta i64 LE, key str
//!   MSET    count u32, count x (key str, value str)
//! ```
//!
//! Decoding is total: a payload that does not parse is applied as a no-op and reported
//! (it can only come from a newer format or corruption, and every member skips it
//! alike, so the replicas stay identical).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Payload format this node writes.
pub const COMMAND_FORMAT: u8 = 1;
/// Bytes before the opcode-specific part.
pub const COMMAND_HEADER_BYTES: usize = 18;

/// Which requests may apply a SET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCond {
    Always,
    /// NX: only if the key is absent.
    IfAbsent,
    /// XX: only if the key is present.
    IfPresent,
}

/// A write command, as replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Set { key: Bytes, value: Bytes, cond: SetCond },
    Del { keys: Vec<Bytes> },
    IncrBy { key: Bytes, delta: i64 },
    MSet { pairs: Vec<(Bytes, Bytes)> },
}

/// Who is waiting for a command's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Origin {
    pub node: u64,
    pub request: u64,
}

/// The result of applying a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `+OK`
    Ok,
    /// Null bulk: a conditional SET that did not apply.
    Nil,
    Int(i64),
    /// An error reply (the command was applied as a no-op).
    Err(&'static str),
}

/// Redis's wording, so clients that match on it keep working.
pub const ERR_NOT_INTEGER: &str = "ERR value is not an integer or out of range";
pub const ERR_OVERFLOW: &str = "ERR increment or decrement would overflow";

fn put_str(b: &mut BytesMut, s: &[u8]) {
    b.put_u32_le(s.len() as u32);
    b.put_slice(s);
}

impl Command {
    /// Encodes the command tagged with `origin` as an entry payload.
    pub fn encode(&self, origin: Origin) -> Bytes {
        let mut b = BytesMut::with_capacity(COMMAND_HEADER_BYTES + self.payload_hint());
        b.put_u8(COMMAND_FORMAT);
        b.put_u64_le(origin.node);
        b.put_u64_le(origin.request);
        match self {
            Command::Set { key, value, cond } => {
                b.put_u8(1);
                b.put_u8(match cond {
                    SetCond::Always => 0,
                    SetCond::IfAbsent => 1,
                    SetCond::IfPresent => 2,
                });
                put_str(&mut b, key);
                put_str(&mut b, value);
            }
            Command::Del { keys } => {
                b.put_u8(2);
                b.put_u32_le(keys.len() as u32);
                for k in keys {
                    put_str(&mut b, k);
                }
            }
            Command::IncrBy { key, delta } => {
                b.put_u8(3);
                b.put_i64_le(*delta);
                put_str(&mut b, key);
            }
            Command::MSet { pairs } => {
                b.put_u8(4);
                b.put_u32_le(pairs.len() as u32);
                for (k, v) in pairs {
                    put_str(&mut b, k);
                    put_str(&mut b, v);
                }
            }
        }
        b.freeze()
    }

    fn payload_hint(&self) -> usize {
        match self {
            Command::Set { key, value, .. } => 9 + key.len() + value.len(),
            Command::Del { keys } => 4 + keys.iter().map(|k| 4 + k.len()).sum::<usize>(),
            Command::IncrBy { key, .. } => 12 + key.len(),
            Command::MSet { pairs } => 4 + pairs.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>(),
        }
    }

    /// Decodes an entry payload; `None` when it is not a command this node understands.
    /// Keys and values are slices of `data` (no copy).
    pub fn decode(data: &Bytes) -> Option<(Origin, Command)> {
        let mut r = data.clone();
        if r.remaining() < COMMAND_HEADER_BYTES || r.get_u8() != COMMAND_FORMAT {
            return None;
        }
        let origin = Origin { node: r.get_u64_le(), request: r.get_u64_le() };
        let op = r.get_u8();
        fn take(r: &mut Bytes) -> Option<Bytes> {
            if r.remaining() < 4 {
                return None;
            }
            let n = r.get_u32_le() as usize;
            if r.remaining() < n {
                return None;
            }
            Some(r.split_to(n))
        }
        fn count(r: &mut Bytes, min_each: usize) -> Option<usize> {
            if r.remaining() < 4 {
                return None;
            }
            let n = r.get_u32_le() as usize;
            // A count no remaining bytes could satisfy is corrupt: refuse before
            // allocating for it.
            (n.checked_mul(min_each)? <= r.remaining()).then_some(n)
        }
        let cmd = match op {
            1 => {
                if r.remaining() < 1 {
                    return None;
                }
                let cond = match r.get_u8() {
                    0 => SetCond::Always,
                    1 => SetCond::IfAbsent,
                    2 => SetCond::IfPresent,
                    _ => return None,
                };
                let key = take(&mut r)?;
                let value = take(&mut r)?;
                Command::Set { key, value, cond }
            }
            2 => {
                let n = count(&mut r, 4)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(take(&mut r)?);
                }
                Command::Del { keys }
            }
            3 => {
                if r.remaining() < 8 {
                    return None;
                }
                let delta = r.get_i64_le();
                Command::IncrBy { key: take(&mut r)?, delta }
            }
            4 => {
                let n = count(&mut r, 8)?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = take(&mut r)?;
                    pairs.push((k, take(&mut r)?));
                }
                Command::MSet { pairs }
            }
            _ => return None,
        };
        // Trailing bytes mean a format this code does not know.
        r.is_empty().then_some((origin, cmd))
    }
}

/// Parts the map is split into. A snapshot clones one `Arc` per part; while it is being
/// written, the first change to a part copies that part (1/256 of the state, once), and
/// outside snapshots a change is a plain hash-map update. 256 keeps the copy a write may
/// pay small (a million keys: about 4,000 pairs) without making an empty map costly.
pub const KV_PARTS: usize = 256;

/// One part: keys hash with foldhash (randomly seeded, several times faster than SipHash
/// on short keys; replicas never compare iteration order, only the digest).
type Part = std::collections::HashMap<Bytes, Bytes, foldhash::fast::RandomState>;

/// The applied state: a hash map in [`KV_PARTS`] copy-on-write parts, so that a
/// snapshot is a cheap clone written out in the background while the shard keeps
/// applying. (A persistent HAMT did the same job, but every change allocated and copied
/// tree nodes: a sixth of a follower's CPU under redis-benchmark.)
#[derive(Clone, Debug)]
pub struct Kv {
    parts: Vec<Arc<Part>>,
    /// Picks a key's part; the same for every clone of this map.
    router: foldhash::fast::RandomState,
    len: usize,
    /// The sum and xor of every pair's hash, kept up to date on each change so that the
    /// digest costs nothing to read (recomputing it walks the whole map).
    sum: u64,
    xor: u64,
}

impl Default for Kv {
    fn default() -> Kv {
        Kv {
            parts: (0..KV_PARTS).map(|_| Arc::new(Part::default())).collect(),
            router: foldhash::fast::RandomState::default(),
            len: 0,
            sum: 0,
            xor: 0,
        }
    }
}

/// A pair's 64-bit hash: CRC32C of the key, then of the value seeded by it.
fn pair_hash(k: &[u8], v: &[u8]) -> (u64, u32) {
    let h1 = u64::from(crc32c::crc32c(k));
    let h2 = u64::from(crc32c::crc32c_append(h1 as u32 ^ 0x9E37_79B9, v));
    ((h1 << 32) | h2, (k.len() % 64) as u32)
}

/// Stored keys and values are copied out of the entry: a slice would keep the whole
/// receive buffer it came from alive for as long as the key exists.
fn own(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

impl Kv {
    pub fn new() -> Kv {
        Kv::default()
    }

    fn part_of(&self, key: &[u8]) -> usize {
        use std::hash::BuildHasher;
        // The top bits: the parts' own tables index by the low ones.
        (self.router.hash_one(key) >> 56) as usize % KV_PARTS
    }

    /// The part holding `key`, for changing it: copied first if a snapshot shares it.
    fn part_mut(&mut self, key: &[u8]) -> &mut Part {
        let i = self.part_of(key);
        Arc::make_mut(&mut self.parts[i])
    }

    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.parts[self.part_of(key)].get(key)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.parts.iter().flat_map(|p| p.iter())
    }

    /// Inserts as restored from a snapshot.
    pub fn insert(&mut self, key: Bytes, value: Bytes) {
        self.put_with(&key, value, |_| key.clone());
    }

    /// Sets `key` to `value`, copying the key out of the entry only when it is new (an
    /// overwrite keeps the stored key).
    fn put(&mut self, key: &Bytes, value: Bytes) {
        self.put_with(key, value, own);
    }

    fn put_with(&mut self, key: &[u8], value: Bytes, owned_key: impl FnOnce(&[u8]) -> Bytes) {
        let (h, r) = pair_hash(key, &value);
        self.sum = self.sum.wrapping_add(h);
        self.xor ^= h.rotate_left(r);
        let part = self.part_mut(key);
        let old = match part.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, value)),
            None => {
                part.insert(owned_key(key), value);
                None
            }
        };
        match old {
            Some(old) => self.forget(key, &old),
            None => self.len += 1,
        }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.part_mut(key).remove(key) {
            Some(old) => {
                self.len -= 1;
                self.forget(key, &old);
                true
            }
            None => false,
        }
    }

    fn forget(&mut self, key: &[u8], value: &[u8]) {
        let (h, r) = pair_hash(key, value);
        self.sum = self.sum.wrapping_sub(h);
        self.xor ^= h.rotate_left(r);
    }

    /// Applies a replicated write.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match cmd {
            Command::Set { key, value, cond } => {
                let allowed = match cond {
                    SetCond::Always => true,
                    SetCond::IfAbsent => self.get(key).is_none(),
                    SetCond::IfPresent => self.get(key).is_some(),
                };
                if !allowed {
                    return Outcome::Nil;
                }
                self.put(key, own(value));
                Outcome::Ok
            }
            Command::Del { keys } => {
                let mut n = 0;
                for k in keys {
                    if self.remove(k.as_ref()) {
                        n += 1;
                    }
                }
                Outcome::Int(n)
            }
            Command::IncrBy { key, delta } => {
                let current = match self.get(key) {
                    None => 0i64,
                    Some(v) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()) {
                        Some(n) => n,
                        None => return Outcome::Err(ERR_NOT_INTEGER),
                    },
                };
                let Some(next) = current.checked_add(*delta) else { return Outcome::Err(ERR_OVERFLOW) };
                self.put(key, Bytes::from(next.to_string()));
                Outcome::Int(next)
            }
            Command::MSet { pairs } => {
                for (k, v) in pairs {
                    self.put(k, own(v));
                }
                Outcome::Ok
            }
        }
    }

    /// An order-independent digest of the whole state, for comparing replicas: the sum
    /// and xor of per-pair CRC32C-based 64-bit hashes, with the pair count. Constant
    /// time: the sums are maintained as pairs change.
    pub fn digest(&self) -> u64 {
        Self::combine(self.sum, self.xor, self.len)
    }

    fn combine(sum: u64, xor: u64, len: usize) -> u64 {
        sum ^ xor.rotate_left(17) ^ (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The digest recomputed from every pair (what [`Kv::digest`] must always equal).
    pub fn digest_from_scratch(&self) -> u64 {
        let (mut sum, mut xor) = (0u64, 0u64);
        for (k, v) in self.iter() {
            let (h, r) = pair_hash(k, v);
            sum = sum.wrapping_add(h);
            xor ^= h.rotate_left(r);
        }
        Self::combine(sum, xor, self.iter().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn commands_round_trip() {
        let origin = Origin { node: 3, request: u64::MAX };
        let cmds = [
            Command::Set { key: b("k"), value: b("v"), cond: SetCond::Always },
            Command::Set { key: b(""), value: Bytes::from(vec![0u8; 300]), cond: SetCond::IfAbsent },
            Command::Set { key: b("k"), value: b(""), cond: SetCond::IfPresent },
            Command::Del { keys: vec![b("a"), b("b")] },
            Command::Del { keys: vec![] },
            Command::IncrBy { key: b("n"), delta: -7 },
            Command::MSet { pairs: vec![(b("a"), b("1")), (b("b"), b("2"))] },
        ];
        for c in cmds {
            let data = c.encode(origin);
            assert_eq!(Command::decode(&data), Some((origin, c.clone())), "{c:?}");
        }
    }

    #[test]
    fn every_truncation_and_trailing_garbage_is_refused() {
        let data = Command::MSet { pairs: vec![(b("key"), b("value"))] }.encode(Origin { node: 1, request: 2 });
        for n in 0..data.len() {
            assert_eq!(Command::decode(&data.slice(..n)), None, "truncated at {n}");
        }
        let mut longer = BytesMut::from(&data[..]);
        longer.put_u8(0);
        assert_eq!(Command::decode(&longer.freeze()), None);
        let mut bad = BytesMut::from(&data[..]);
        bad[0] = 9;
        assert_eq!(Command::decode(&bad.freeze()), None, "unknown format");
        // A count claiming more items than bytes left is refused without allocating.
        let mut huge = BytesMut::from(&data[..COMMAND_HEADER_BYTES]);
        huge[COMMAND_HEADER_BYTES - 1] = 2;
        huge.put_u32_le(u32::MAX);
        assert_eq!(Command::decode(&huge.freeze()), None);
    }

    #[test]
    fn set_conditions_del_incr_and_mset() {
        let mut kv = Kv::new();
        let set = |k: &str, v: &str, cond| Command::Set { key: b(k), value: b(v), cond };
        assert_eq!(kv.apply(&set("a", "1", SetCond::IfPresent)), Outcome::Nil);
        assert_eq!(kv.apply(&set("a", "1", SetCond::IfAbsent)), Outcome::Ok);
        assert_eq!(kv.apply(&set("a", "2", SetCond::IfAbsent)), Outcome::Nil);
        assert_eq!(kv.get(b"a"), Some(&b("1")));
        assert_eq!(kv.apply(&set("a", "5", SetCond::IfPresent)), Outcome::Ok);
        assert_eq!(kv.apply(&Command::IncrBy { key: b("a"), delta: 10 }), Outcome::Int(15));
        assert_eq!(kv.apply(&Command::IncrBy { key: b("new"), delta: -1 }), Outcome::Int(-1));
        assert_eq!(kv.apply(&set("s", "x", SetCond::Always)), Outcome::Ok);
        assert_eq!(kv.apply(&Command::IncrBy { key: b("s"), delta: 1 }), Outcome::Err(ERR_NOT_INTEGER));
        assert_eq!(kv.apply(&set("m", &i64::MAX.to_string(), SetCond::Always)), Outcome::Ok);
        assert_eq!(kv.apply(&Command::IncrBy { key: b("m"), delta: 1 }), Outcome::Err(ERR_OVERFLOW));
        assert_eq!(kv.get(b"m"), Some(&b(&i64::MAX.to_string())), "a failed INCR changes nothing");
        assert_eq!(kv.apply(&Command::MSet { pairs: vec![(b("x"), b("1")), (b("y"), b("2"))] }), Outcome::Ok);
        assert_eq!(kv.apply(&Command::Del { keys: vec![b("x"), b("y"), b("zz")] }), Outcome::Int(2));
        assert_eq!(kv.len(), 4);
    }

    /// The maintained digest equals the one recomputed from scratch after every kind
    /// of change: overwrites, deletes of present and absent keys, increments, MSET.
    #[test]
    fn maintained_digest_matches_a_full_recomputation() {
        let mut kv = Kv::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..3000 {
            let key = b(&format!("k{}", next(50)));
            let cmd = match next(5) {
                0 => Command::Set { key, value: b(&format!("v{}", next(7))), cond: SetCond::Always },
                1 => Command::Set { key, value: b("nx"), cond: SetCond::IfAbsent },
                2 => Command::Del { keys: vec![key, b(&format!("k{}", next(60)))] },
                3 => Command::IncrBy { key, delta: next(5) as i64 - 2 },
                _ => Command::MSet { pairs: vec![(key.clone(), b("m")), (key, b("m2"))] },
            };
            kv.apply(&cmd);
            assert_eq!(kv.digest(), kv.digest_from_scratch(), "step {step}: {cmd:?}");
        }
        assert!(!kv.is_empty());
    }

    #[test]
    fn digest_depends_on_content_not_order() {
        let mut a = Kv::new();
        let mut c = Kv::new();
        for i in 0..100 {
            a.insert(b(&format!("k{i}")), b(&format!("v{i}")));
        }
        for i in (0..100).rev() {
            c.insert(b(&format!("k{i}")), b(&format!("v{i}")));
        }
        assert_eq!(a.digest(), c.digest());
        c.insert(b("k5"), b("changed"));
        assert_ne!(a.digest(), c.digest());
        let mut d = a.clone();
        d.insert(b("k5v"), b("5"));
        assert_ne!(a.digest(), d.digest());
    }

    /// A snapshot is a clone: changes after it never show in it, and every change shows
    /// in the live map, whichever parts the snapshot still shares.
    #[test]
    fn a_clone_is_a_frozen_snapshot_and_the_live_map_keeps_changing() {
        let mut kv = Kv::new();
        for i in 0..2000u32 {
            kv.insert(b(&format!("k{i}")), b(&format!("v{i}")));
        }
        let snap = kv.clone();
        let (snap_digest, snap_len) = (snap.digest(), snap.len());
        for i in (0..2000u32).step_by(3) {
            kv.apply(&Command::Set { key: b(&format!("k{i}")), value: b("new"), cond: SetCond::Always });
        }
        kv.apply(&Command::Del { keys: vec![b("k1"), b("k2")] });
        kv.apply(&Command::Set { key: b("fresh"), value: b("x"), cond: SetCond::Always });
        assert_eq!((snap.digest(), snap.len()), (snap_digest, snap_len), "the snapshot did not move");
        assert_eq!(snap.digest(), snap.digest_from_scratch());
        assert_eq!(snap.get(b"k3").map(|v| &v[..]), Some(&b"v3"[..]));
        assert_eq!(snap.get(b"fresh"), None);
        assert_eq!(kv.get(b"k3").map(|v| &v[..]), Some(&b"new"[..]));
        assert_eq!(kv.get(b"k1"), None);
        assert_eq!(kv.get(b"fresh").map(|v| &v[..]), Some(&b"x"[..]));
        assert_eq!(kv.len(), 2000 - 2 + 1);
        assert_eq!(kv.iter().count(), kv.len());
        assert_eq!(kv.digest(), kv.digest_from_scratch());
    }

    #[test]
    fn stored_values_do_not_share_the_entry_buffer() {
        let data = Command::Set { key: b("k"), value: b("v"), cond: SetCond::Always }.encode(Origin::default());
        let (_, cmd) = Command::decode(&data).unwrap();
        let mut kv = Kv::new();
        kv.apply(&cmd);
        let stored = kv.get(b"k").unwrap();
        let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        assert!(!range.contains(&(stored.as_ptr() as usize)), "the value was copied out");
    }

    #[test]
    fn stored_keys_do_not_share_entry_buffers_on_insert_or_overwrite() {
        let mut kv = Kv::new();
        let mut buffers = Vec::new();
        for v in ["v1", "v2", "v3"] {
            let data = Command::Set { key: b("key"), value: b(v), cond: SetCond::Always }.encode(Origin::default());
            let (_, cmd) = Command::decode(&data).unwrap();
            kv.apply(&cmd);
            buffers.push(data);
        }
        assert_eq!((kv.len(), kv.get(b"key").map(Bytes::as_ref)), (1, Some(&b"v3"[..])));
        let (key, _) = kv.iter().next().unwrap();
        for data in &buffers {
            let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
            assert!(!range.contains(&(key.as_ptr() as usize)), "the key was copied out");
        }
        assert_eq!(kv.digest(), kv.digest_from_scratch());
    }
}
