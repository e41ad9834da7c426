//! Times writing and reading a snapshot file of the key-value state (what a node does
//! when it takes a snapshot, and when it restarts or installs one).
//! Usage: `cargo run --release -p skiff-node --example snapshot_io [KEYS] [DIR]`
//! (default 200000 keys of 100-byte values, in a new directory under /var/tmp, removed
//! afterwards).

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use skiff_engine::{ConfState, SnapshotMeta};
use skiff_node::kv::Kv;
use skiff_node::snapshot::{self, SnapshotDir};

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(200_000, |a| a.parse().expect("a number of keys"));
    let dir = args.next().map_or_else(
        || std::env::temp_dir().join(format!("skiff-snapshot-io-{}", std::process::id())),
        std::path::PathBuf::from,
    );
    let dir = if dir.starts_with("/tmp") {
        std::path::PathBuf::from("/var/tmp").join(dir.file_name().expect("name"))
    } else {
        dir
    };
    std::fs::create_dir_all(&dir).expect("create the directory");
    let value = Bytes::from(vec![b'x'; 100]);
    let mut kv = Kv::new();
    for i in 0..keys {
        kv.insert(Bytes::from(format!("key:{i:012}")), value.clone());
    }
    let meta = SnapshotMeta {
        index: 1000,
        term: 2,
        conf_state: ConfState::with_voters([1, 2, 3]),
        election_timeout_ticks: 10,
    };
    let sd = SnapshotDir::new(&dir);
    let start = Instant::now();
    let desc = snapshot::write(&sd, 7, 0, &meta, &kv).expect("write");
    let wrote = start.elapsed();
    let start = Instant::now();
    let (_, loaded, _) = snapshot::read(&sd.file(meta.index)).expect("read");
    let read = start.elapsed();
    assert_eq!(loaded.digest(), kv.digest(), "the snapshot read back holds the same state");
    println!(
        "{keys} keys, {} bytes: write {:.0} ms ({:.0} ns per key), read {:.0} ms ({:.0} ns per key)",
        desc.bytes,
        wrote.as_secs_f64() * 1e3,
        wrote.as_nanos() as f64 / keys as f64,
        read.as_secs_f64() * 1e3,
        read.as_nanos() as f64 / keys as f64
    );
    std::fs::remove_dir_all(&dir).expect("remove the directory");
}
