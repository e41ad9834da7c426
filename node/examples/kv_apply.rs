//! Times the key-value state machine alone: SETs of 100-byte values over a key space
//! (redis-benchmark -r style), decoded from encoded entries as the shard applies them,
//! with a snapshot clone held for part of the run as a snapshot being written would.
//! Usage: `cargo run --release -p skiff-node --example kv_apply [SETS] [KEYS]`.

use std::time::Instant;

use bytes::Bytes;
use skiff_node::kv::{Command, Kv, Origin, SetCond};

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a number"));
    let sets = args.next().unwrap_or(2_000_000);
    let keys = args.next().unwrap_or(100_000);
    let value = Bytes::from(vec![b'x'; 100]);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let entries: Vec<Bytes> = (0..sets)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = Bytes::from(format!("key:{:012}", x % keys));
            Command::Set { key, value: value.clone(), cond: SetCond::Always }.encode(Origin { node: 1, request: i })
        })
        .collect();
    let mut kv = Kv::new();
    let start = Instant::now();
    let mut snapshot = None;
    for (i, e) in entries.iter().enumerate() {
        // A snapshot clone lives for a tenth of every million writes.
        if i % 1_000_000 == 0 {
            snapshot = Some(kv.clone());
        } else if i % 1_000_000 == 100_000 {
            snapshot = None;
        }
        let (_, cmd) = Command::decode(e).expect("decodes");
        kv.apply(&cmd);
    }
    let took = start.elapsed();
    drop(snapshot);
    println!(
        "{sets} SETs over {keys} keys: {:.0} ns per apply, {} keys, digest {:016x}",
        took.as_nanos() as f64 / sets as f64,
        kv.len(),
        kv.digest()
    );
}
