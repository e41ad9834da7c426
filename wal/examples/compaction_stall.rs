//! How long the append that compacts the log after a snapshot keeps the shard's thread:
//! the log holds `ENTRIES` entries of 100 bytes, each in its own allocation (as a
//! leader's proposals are), all in the tail cache, and one append then records a
//! snapshot at the last index, releasing all but the catch-up tail.
//!
//! Usage: `cargo run --release -p skiff-wal --example compaction_stall [ENTRIES]`
//! (default 400,000: a default 64 MiB snapshot interval of 100-byte writes). Runs in a
//! directory under `target/`, removed afterwards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use skiff_engine::{Entry, EntryKind, HardState, SnapshotMeta};
use skiff_wal::{Append, DmaFs, Identity, Wal, WalOptions};

/// Entries per append while filling the log.
const BATCH: u64 = 1000;
/// Entries kept below the snapshot, as the node's default keeps.
const CATCHUP: u64 = 5000;

fn main() {
    let total: u64 = std::env::args().nth(1).map_or(400_000, |a| a.parse().expect("ENTRIES: a number"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tmp")
        .join(format!("compaction-stall-{}", std::process::id()));
    let d = dir.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let mut opts = WalOptions::new(&d, Identity { cluster_id: 1, shard_id: 0, node_id: 1 });
            opts.catchup_entries = CATCHUP;
            let wal = Wal::open(DmaFs, opts).await.expect("open");
            for round in 0..3u64 {
                let first = round * (total + 1) + 1;
                let mut index = first;
                while index < first + total {
                    let n = BATCH.min(first + total - index);
                    let entries: Vec<Entry> = (index..index + n)
                        .map(|i| Entry {
                            term: 1,
                            index: i,
                            kind: EntryKind::Normal,
                            data: Bytes::from(vec![(i % 251) as u8; 100]),
                        })
                        .collect();
                    wal.submit(&Append { entries: &entries, must_sync: true, ..Default::default() })
                        .await
                        .expect("append");
                    wal.next_completion().await.expect("completion");
                    index += n;
                }
                let last = index - 1;
                let meta = SnapshotMeta { index: last, term: 1, ..Default::default() };
                // The compacting append carries one new entry, as a node's would.
                let next =
                    [Entry { term: 1, index: last + 1, kind: EntryKind::Normal, data: Bytes::from(vec![1u8; 100]) }];
                let hs = HardState { term: 1, vote: 1, commit: last };
                let t = Instant::now();
                wal.submit(&Append {
                    entries: &next,
                    hard_state: Some(hs),
                    compact: Some(&meta),
                    must_sync: true,
                    ..Default::default()
                })
                .await
                .expect("compacting append");
                let took = t.elapsed();
                wal.next_completion().await.expect("completion");
                println!(
                    "round {round}: compacting {} cached entries: submit took {:.2} ms",
                    total - CATCHUP,
                    took.as_secs_f64() * 1e3
                );
                glommio::timer::sleep(Duration::from_millis(200)).await;
            }
            wal.close().await.expect("close");
        })
        .expect("executor")
        .join()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
}
