//! Appending, reading back through `Storage`, restarting, rotation, compaction and
//! snapshot install, on the simulated disk and on the real one (io_uring, O_DIRECT).

use std::rc::Rc;

use bytes::Bytes;
use skiff_engine::{ConfState, HardState, SnapshotMeta, Storage, StorageError};
use skiff_wal::format::{self, BLOCK_BYTES, FORMAT_VERSION, HeaderRead, SegmentHeader};
use skiff_wal::recovery::recover_files;
use skiff_wal::{Append, DmaFs, Identity, SimFs, Wal, WalError, WalOptions};

use crate::common::{IDENT, Model, TestDir, ent, run, sim_dir, small_opts};

fn hs(term: u64, commit: u64) -> HardState {
    HardState { term, vote: 1, commit }
}

/// Submits `a` to the WAL and to the model.
async fn submit<F: skiff_wal::FileSystem + 'static>(wal: &Wal<F>, model: &mut Model, a: Append<'_>) -> u64 {
    model.apply(&a);
    wal.submit(&a).await.expect("submit")
}

#[test]
fn entries_are_readable_at_submit_and_completions_arrive_in_order() {
    run(async {
        let fs = SimFs::new();
        let wal = Rc::new(Wal::open(fs.clone(), small_opts(&sim_dir())).await.unwrap());
        let storage = wal.storage();
        let drain = {
            let wal = wal.clone();
            glommio::spawn_local(async move {
                let mut got = Vec::new();
                while got.len() < 40 {
                    got.push(wal.next_completion().await.unwrap());
                }
                got
            })
        };
        let mut model = Model::default();
        for i in 1..=40u64 {
            let e = [ent(i, 1, 300)];
            let seq = submit(
                &wal,
                &mut model,
                Append {
                    tag: 1000 + i,
                    entries: &e,
                    hard_state: Some(hs(1, i.saturating_sub(1))),
                    must_sync: true,
                    ..Default::default()
                },
            )
            .await;
            assert_eq!(seq, i);
            // Readable as soon as submitted, durable or not.
            assert_eq!(storage.last_index(), i);
            let mut out = Vec::new();
            storage.entries(i, i + 1, u64::MAX, &mut out).unwrap();
            assert_eq!(out, e);
        }
        let got = drain.await;
        let tags: Vec<u64> = got.iter().map(|c| c.tag).collect();
        assert_eq!(tags, (1001..=1040).collect::<Vec<_>>(), "in order, none missing");
        assert!(got.iter().all(|c| c.synced));
        model.assert_storage(&storage);
        assert!(fs.files_in(&sim_dir()).len() >= 3, "40 appends of 4 KiB rotate through several 64 KiB segments");
    });
}

#[test]
fn restart_recovers_log_hard_state_and_later_appends_supersede() {
    run(async {
        let fs = SimFs::new();
        let mut model = Model::default();
        {
            let wal = Wal::open(fs.clone(), small_opts(&sim_dir())).await.unwrap();
            let e: Vec<_> = (1..=30).map(|i| ent(i, 1, 1500)).collect();
            for chunk in e.chunks(5) {
                submit(&wal, &mut model, Append { entries: chunk, must_sync: true, ..Default::default() }).await;
                wal.next_completion().await.unwrap();
            }
            // A new leader overwrites the suffix from 21 on (Raft §5.3).
            let e2: Vec<_> = (21..=24).map(|i| ent(i, 2, 900)).collect();
            submit(
                &wal,
                &mut model,
                Append { entries: &e2, hard_state: Some(hs(2, 20)), must_sync: true, ..Default::default() },
            )
            .await;
            wal.close().await.unwrap();
        }
        let wal = Wal::open(fs.clone(), small_opts(&sim_dir())).await.unwrap();
        assert_eq!(wal.open_report().torn_tail, None);
        model.assert_storage(&wal.storage());
        assert_eq!(wal.storage().term(24), Ok(2));
        assert_eq!(wal.storage().term(25), Err(StorageError::Unavailable));
    });
}

#[test]
fn real_disk_rotation_cold_reads_and_restart() {
    let dir = TestDir::new("real-rotation");
    let d = dir.0.join("nested/shard-3");
    run(async move {
        let mut model = Model::default();
        let mut opts = small_opts(&d);
        opts.tail_cache_bytes = 8 * 1024;
        {
            // The directory does not exist yet: open creates it.
            let wal = Wal::open(DmaFs, opts.clone()).await.unwrap();
            for i in 1..=120u64 {
                let e = [ent(i, 1 + i / 50, 700 + (i as usize * 37) % 3000)];
                submit(
                    &wal,
                    &mut model,
                    Append {
                        entries: &e,
                        hard_state: Some(hs(1 + i / 50, i - 1)),
                        must_sync: i % 3 != 0,
                        ..Default::default()
                    },
                )
                .await;
                let c = wal.next_completion().await.unwrap();
                assert_eq!(c.seq, i);
                assert_eq!(c.synced, i % 3 != 0 || c.synced);
            }
            let (cached, _) = wal.storage().cached();
            assert!(cached < 120, "the small tail cache evicted old entries");
            // Old entries come back from disk (pread), verified by their CRC.
            model.assert_storage(&wal.storage());
            let mut out = Vec::new();
            wal.storage().entries(1, 121, 10_000, &mut out).unwrap();
            let sum: u64 = out.iter().map(|e| e.size_bytes()).sum();
            assert!(sum <= 10_000 && !out.is_empty() && out[0].index == 1);
            wal.close().await.unwrap();
        }
        let segments = std::fs::read_dir(&d).unwrap().count();
        assert!(segments > 3, "rotated through {segments} segment files");
        // A crash during the O_DIRECT probes leaves their file behind (row D2): the
        // next start removes it and recovers.
        let probe = d.join(skiff_wal::fs::DIRECT_IO_PROBE_NAME);
        std::fs::write(&probe, [0u8; 4096]).unwrap();
        let wal = Wal::open(DmaFs, opts).await.unwrap();
        assert!(!probe.exists());
        model.assert_storage(&wal.storage());
        // And it keeps appending after recovery.
        let e = [ent(121, 3, 100)];
        submit(&wal, &mut model, Append { entries: &e, must_sync: true, ..Default::default() }).await;
        wal.next_completion().await.unwrap();
        model.assert_storage(&wal.storage());
        wal.close().await.unwrap();
    });
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { index, term, conf_state: ConfState::with_voters([1, 2, 3]), election_timeout_ticks: 12 }
}

#[test]
fn compaction_releases_whole_segments_and_recovery_needs_none_of_them() {
    run(async {
        let fs = SimFs::new();
        let dir = sim_dir();
        let mut model = Model::default();
        let wal = Wal::open(fs.clone(), small_opts(&dir)).await.unwrap();
        for i in 1..=60u64 {
            let e = [ent(i, 1, 3000)];
            submit(
                &wal,
                &mut model,
                Append {
                    entries: &e,
                    hard_state: if i == 1 { Some(hs(1, 0)) } else { None },
                    must_sync: true,
                    ..Default::default()
                },
            )
            .await;
            wal.next_completion().await.unwrap();
        }
        let before: Vec<String> = fs.files_in(&dir).into_iter().map(|f| f.0).collect();
        let m = meta(45, 1);
        submit(&wal, &mut model, Append { compact: Some(&m), must_sync: true, ..Default::default() }).await;
        wal.next_completion().await.unwrap();
        wal.storage().set_snapshot_data(45, Bytes::from_static(b"kv state"));
        assert_eq!(wal.storage().snapshot(46, 3).unwrap().meta, m);
        assert_eq!(wal.storage().term(44), Err(StorageError::Compacted));
        // Keep appending so the housekeeper recycles released segments as spares.
        for i in 61..=90u64 {
            let e = [ent(i, 1, 3000)];
            submit(&wal, &mut model, Append { entries: &e, must_sync: true, ..Default::default() }).await;
            wal.next_completion().await.unwrap();
        }
        wal.close().await.unwrap();
        let after: Vec<String> = fs.files_in(&dir).into_iter().map(|f| f.0).collect();
        assert!(!after.contains(&before[0]), "the first segment was released: {before:?} -> {after:?}");
        // Segments activated from recycled spares say so in their headers (recovery
        // takes bytes without a batch header after their data for the older life's);
        // those created zero-filled do not.
        let recycled: Vec<(String, bool)> = fs
            .files_in(&dir)
            .into_iter()
            .filter_map(|(name, data)| match SegmentHeader::read(&data) {
                HeaderRead::Valid(h) => Some((name, h.recycled)),
                _ => None,
            })
            .collect();
        assert!(recycled.iter().any(|r| r.1), "a recycled spare was activated: {recycled:?}");
        assert!(recycled.iter().any(|r| !r.1), "and a zero-filled one: {recycled:?}");
        let wal = Wal::open(fs.clone(), small_opts(&dir)).await.unwrap();
        model.assert_storage(&wal.storage());
        assert_eq!(wal.storage().first_index(), 46);
        assert_eq!(wal.storage().initial_state().unwrap().election_timeout_ticks, 12);
        assert_eq!(
            wal.storage().snapshot(46, 3),
            Err(StorageError::SnapshotTemporarilyUnavailable),
            "the node hands the snapshot file over after a restart"
        );
    });
}

/// A recycled segment keeps its older life's batches past the new data. When the new
/// data ends inside one of them, a restart must not take the rest for a torn tail (row
/// B2): the segment's header says it was recycled. Cleared, the same bytes are
/// reported (E4), which shows the directory does hold such a tail.
#[test]
fn a_restart_in_a_recycled_segment_reports_no_torn_tail() {
    run(async {
        let fs = SimFs::new();
        let dir = sim_dir();
        let mut model = Model::default();
        let wal = Wal::open(fs.clone(), small_opts(&dir)).await.unwrap();
        let mut i = 0;
        // Two-block batches fill several segments; a snapshot then releases them.
        for _ in 0..40 {
            i += 1;
            let e = [ent(i, 1, 6000)];
            submit(&wal, &mut model, Append { entries: &e, must_sync: true, ..Default::default() }).await;
            wal.next_completion().await.unwrap();
        }
        let m = meta(i, 1);
        submit(&wal, &mut model, Append { compact: Some(&m), must_sync: true, ..Default::default() }).await;
        wal.next_completion().await.unwrap();
        // One-block batches until the active segment is a recycled one whose new data
        // ends at an even block: inside an older two-block batch.
        let active = |fs: &SimFs| {
            let mut segs: Vec<(SegmentHeader, Vec<u8>)> = fs
                .files_in(&dir)
                .into_iter()
                .filter_map(|(_, data)| match SegmentHeader::read(&data) {
                    HeaderRead::Valid(h) => Some((h, data)),
                    _ => None,
                })
                .collect();
            segs.sort_by_key(|(h, _)| h.segment_seq);
            segs.pop().expect("an active segment")
        };
        loop {
            i += 1;
            assert!(i < 400, "no recycled segment was activated");
            let e = [ent(i, 1, 3000)];
            submit(&wal, &mut model, Append { entries: &e, must_sync: true, ..Default::default() }).await;
            wal.next_completion().await.unwrap();
            let (h, data) = active(&fs);
            let batches_here = i - h.first_index + 1;
            if h.recycled && batches_here >= 3 && batches_here % 2 == 1 {
                let next = BLOCK_BYTES * (1 + batches_here as usize);
                assert!(data[next..next + BLOCK_BYTES].iter().any(|&b| b != 0), "older bytes follow the data");
                break;
            }
        }
        wal.close().await.unwrap();
        let mut files = fs.files_in(&dir);
        let r = recover_files(&dir, IDENT, u64::MAX, &files).unwrap();
        assert_eq!(r.torn_tail, None, "B2: the older life's bytes are no tear");
        assert!(model.matches(&r));
        let (h, _) = active(&fs);
        let name = format::segment_name(h.segment_seq);
        let seg = &mut files.iter_mut().find(|f| f.0 == name).unwrap().1;
        SegmentHeader { recycled: false, ..h }.encode(&mut seg[..BLOCK_BYTES]);
        let r = recover_files(&dir, IDENT, u64::MAX, &files).unwrap();
        assert!(r.torn_tail.is_some(), "without the flag the same bytes read as a torn tail");
        assert!(model.matches(&r), "and nothing acknowledged is lost either way");
    });
}

/// With `catchup_entries`, a compaction keeps the entries just below the snapshot
/// (bounded by count and by bytes) for followers slightly behind; recovery restores
/// the same compaction point, and later compactions move it on.
#[test]
fn compaction_keeps_a_catch_up_tail_across_recovery() {
    run(async {
        let fs = SimFs::new();
        let dir = sim_dir();
        let mut opts = small_opts(&dir);
        opts.catchup_entries = 10;
        let mut model = Model { catchup_entries: 10, ..Model::default() };
        let wal = Wal::open(fs.clone(), opts.clone()).await.unwrap();
        for i in 1..=60u64 {
            let e = [ent(i, 1 + i / 40, 3000)];
            let hard_state = Some(hs(1 + i / 40, i.saturating_sub(2)));
            submit(&wal, &mut model, Append { entries: &e, hard_state, must_sync: true, ..Default::default() }).await;
            wal.next_completion().await.unwrap();
        }
        let before: Vec<String> = fs.files_in(&dir).into_iter().map(|f| f.0).collect();
        let m = meta(45, 2);
        submit(&wal, &mut model, Append { compact: Some(&m), must_sync: true, ..Default::default() }).await;
        wal.next_completion().await.unwrap();
        assert_eq!((model.compacted, wal.storage().first_index()), ((35, 1), 36));
        model.assert_storage(&wal.storage());
        wal.storage().set_snapshot_data(45, Bytes::from_static(b"kv state"));
        assert_eq!(wal.storage().snapshot(36, 3).unwrap().meta, m, "the snapshot is still the one at 45");
        for i in 61..=90u64 {
            let e = [ent(i, 2, 3000)];
            submit(&wal, &mut model, Append { entries: &e, must_sync: true, ..Default::default() }).await;
            wal.next_completion().await.unwrap();
        }
        wal.close().await.unwrap();
        let after: Vec<String> = fs.files_in(&dir).into_iter().map(|f| f.0).collect();
        assert!(!after.contains(&before[0]), "segments wholly below the tail were released: {before:?} -> {after:?}");

        let wal = Wal::open(fs.clone(), opts.clone()).await.unwrap();
        model.assert_storage(&wal.storage());
        assert_eq!(wal.storage().snapshot_meta(), m);
        assert_eq!(wal.storage().term(35), Ok(1));
        assert_eq!(wal.storage().term(34), Err(StorageError::Compacted));
        // The next snapshot moves the point to 80 - 10; then a byte bound of two
        // records keeps only two entries.
        let m2 = meta(80, 2);
        submit(&wal, &mut model, Append { compact: Some(&m2), must_sync: true, ..Default::default() }).await;
        wal.next_completion().await.unwrap();
        assert_eq!(wal.storage().first_index(), 71);
        wal.close().await.unwrap();
        opts.catchup_bytes = 2 * 3100;
        let wal = Wal::open(fs.clone(), opts.clone()).await.unwrap();
        model.assert_storage(&wal.storage());
        let m3 = meta(85, 2);
        wal.submit(&Append { compact: Some(&m3), must_sync: true, ..Default::default() }).await.unwrap();
        wal.next_completion().await.unwrap();
        assert_eq!(wal.storage().first_index(), 84);
        wal.close().await.unwrap();
        let wal = Wal::open(fs.clone(), opts).await.unwrap();
        assert_eq!((wal.storage().first_index(), wal.storage().last_index()), (84, 90));
        assert_eq!(wal.storage().snapshot_meta(), m3);
        wal.close().await.unwrap();
    });
}

/// Counts its drops, and those made on the thread that created it: the payload of an
/// entry whose release the test watches.
struct Tracked(Vec<u8>, std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>, std::thread::ThreadId);

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1[0].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if std::thread::current().id() == self.2 {
            self.1[1].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A compaction releases exactly the cached entries at or below its compaction point,
/// whether they are few (dropped at once) or many (dropped on glommio's blocking thread,
/// so that the shard's thread does not stall), and keeps the rest readable.
#[test]
fn compaction_releases_the_cached_entries_it_drops_and_only_those() {
    // (entries, kept, whether the released ones are dropped on another thread)
    for (total, keep, elsewhere) in [(300u64, 20u64, false), (9_000, 1_000, true)] {
        run(async move {
            let fs = SimFs::new();
            let mut opts = small_opts(&sim_dir());
            opts.segment_bytes = 4 << 20;
            opts.tail_cache_bytes = u64::MAX;
            opts.catchup_entries = keep;
            let wal = Wal::open(fs, opts).await.unwrap();
            let counts = std::sync::Arc::new([(); 2].map(|_| std::sync::atomic::AtomicUsize::new(0)));
            let dropped = |i: usize| counts[i].load(std::sync::atomic::Ordering::SeqCst);
            let me = std::thread::current().id();
            for first in (1..=total).step_by(100) {
                let es: Vec<_> = (first..first + 100)
                    .map(|i| skiff_engine::Entry {
                        term: 1,
                        index: i,
                        kind: skiff_engine::EntryKind::Normal,
                        data: Bytes::from_owner(Tracked(i.to_le_bytes().to_vec(), counts.clone(), me)),
                    })
                    .collect();
                wal.submit(&Append { entries: &es, must_sync: true, ..Default::default() }).await.unwrap();
                wal.next_completion().await.unwrap();
            }
            assert_eq!(dropped(0), 0, "all cached, none released");
            let m = meta(total, 1);
            wal.submit(&Append { compact: Some(&m), must_sync: true, ..Default::default() }).await.unwrap();
            wal.next_completion().await.unwrap();
            let released = (total - keep) as usize;
            for _ in 0..500 {
                if dropped(0) >= released {
                    break;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(dropped(0), released, "{total} entries, {keep} kept");
            assert_eq!(dropped(1), if elsewhere { 0 } else { released }, "dropped on the shard's thread");
            let s = wal.storage();
            assert_eq!((s.first_index(), s.last_index()), (total - keep + 1, total));
            let mut out = Vec::new();
            s.entries(total - keep + 1, total + 1, u64::MAX, &mut out).unwrap();
            assert_eq!(out.len() as u64, keep);
            assert!(out.iter().all(|e| e.data.as_ref() == e.index.to_le_bytes()), "the kept tail reads back");
            drop(out);
            wal.close().await.unwrap();
        });
    }
}

#[test]
fn snapshot_install_replaces_the_whole_log() {
    run(async {
        let fs = SimFs::new();
        let mut model = Model::default();
        {
            let wal = Wal::open(fs.clone(), small_opts(&sim_dir())).await.unwrap();
            let e: Vec<_> = (1..=10).map(|i| ent(i, 1, 50)).collect();
            submit(
                &wal,
                &mut model,
                Append { entries: &e, hard_state: Some(hs(1, 5)), must_sync: true, ..Default::default() },
            )
            .await;
            let m = meta(50, 3);
            let e2: Vec<_> = (51..=55).map(|i| ent(i, 3, 50)).collect();
            submit(
                &wal,
                &mut model,
                Append {
                    install: Some(&m),
                    entries: &e2,
                    hard_state: Some(hs(3, 50)),
                    must_sync: true,
                    ..Default::default()
                },
            )
            .await;
            assert_eq!(wal.storage().first_index(), 51);
            wal.close().await.unwrap();
        }
        let wal = Wal::open(fs, small_opts(&sim_dir())).await.unwrap();
        model.assert_storage(&wal.storage());
        assert_eq!(wal.storage().term(50), Ok(3));
    });
}

#[test]
fn invalid_appends_are_refused_and_the_wal_keeps_working() {
    run(async {
        let wal = Wal::open(SimFs::new(), small_opts(&sim_dir())).await.unwrap();
        let gap = [ent(5, 1, 10)];
        let err = wal.submit(&Append { entries: &gap, ..Default::default() }).await.unwrap_err();
        assert!(matches!(err, WalError::InvalidAppend(_)), "{err}");
        let huge = [ent(1, 1, 80 * 1024)];
        let err = wal.submit(&Append { entries: &huge, ..Default::default() }).await.unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        let ok = [ent(1, 1, 10)];
        wal.submit(&Append { entries: &ok, must_sync: true, ..Default::default() }).await.unwrap();
        assert!(wal.next_completion().await.unwrap().synced);
    });
}

#[test]
fn bad_data_dirs_get_operator_errors() {
    run(async {
        let dir = sim_dir();
        // Another cluster/shard's directory.
        let fs = SimFs::new();
        {
            let wal = Wal::open(fs.clone(), small_opts(&dir)).await.unwrap();
            let e = [ent(1, 1, 10)];
            wal.submit(&Append { entries: &e, must_sync: true, ..Default::default() }).await.unwrap();
            wal.close().await.unwrap();
        }
        let mut other = small_opts(&dir);
        other.identity = Identity { shard_id: 4, ..IDENT };
        let err = Wal::open(fs.clone(), other).await.unwrap_err();
        let s = err.to_string();
        assert!(matches!(err, WalError::BadDataDir { .. }), "{s}");
        assert!(s.contains("shard 3") && s.contains("shard 4"), "{s}");

        // A file that is not a segment.
        fs.plant(&dir.join("notes.txt"), b"hello".to_vec());
        let err = Wal::open(fs.clone(), small_opts(&dir)).await.unwrap_err();
        assert!(err.to_string().contains("\"notes.txt\" is not a WAL segment"), "{err}");

        // An unknown format version.
        let fs = SimFs::new();
        let mut block = vec![0u8; BLOCK_BYTES];
        SegmentHeader { identity: IDENT, segment_seq: 1, first_index: 1, first_batch_seq: 1, recycled: false }
            .encode(&mut block);
        block[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let crc = crc32c::crc32c(&block[0..64]);
        block[64..68].copy_from_slice(&crc.to_le_bytes());
        fs.create_dir_for_test(&dir);
        fs.plant(&dir.join(format::segment_name(1)), block);
        let err = Wal::open(fs, small_opts(&dir)).await.unwrap_err();
        assert!(err.to_string().contains("format version 2"), "{err}");

        // No O_DIRECT (tmpfs), simulated.
        let fs = SimFs::new();
        fs.set_no_direct_io(true);
        let err = Wal::open(fs, small_opts(&dir)).await.unwrap_err();
        assert!(err.to_string().contains("O_DIRECT"), "{err}");
    });
}

#[test]
fn a_real_tmpfs_directory_is_refused() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        // Nothing to test on a machine without a tmpfs mount.
        return;
    }
    let dir = shm.join(format!("skiff-wal-it-{}", std::process::id()));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _c = Cleanup(dir.clone());
    let err = run(async move { Wal::open(DmaFs, WalOptions::new(dir, IDENT)).await.unwrap_err() });
    let s = err.to_string();
    assert!(s.contains("tmpfs") && s.contains("ext4"), "{s}");
}

#[test]
fn writes_and_fdatasyncs_are_timed_for_the_node() {
    for sync in crate::common::SYNC_MODES {
        writes_and_syncs_are_timed(sync);
    }
}

fn writes_and_syncs_are_timed(sync: skiff_wal::SyncMode) {
    use skiff_wal::{IoTiming, SyncMode};
    run(async move {
        let fs = SimFs::new();
        let wal = Wal::open(fs.clone(), crate::common::small_opts_sync(&sim_dir(), sync)).await.unwrap();
        let mut model = Model::default();
        let e = [ent(1, 1, 100)];
        submit(&wal, &mut model, Append { tag: 1, entries: &e, must_sync: true, ..Default::default() }).await;
        let c = wal.next_completion().await.unwrap();
        assert!(c.synced);
        let mut t = Vec::new();
        wal.take_io_timings(&mut t);
        let aligned = |b: u64| (b as usize).is_multiple_of(BLOCK_BYTES) && b > 0;
        match sync {
            SyncMode::Fdatasync => {
                assert!(
                    t.iter().any(|x| matches!(x, IoTiming::Write { bytes, entries: 1, .. } if aligned(*bytes))),
                    "one block-aligned write: {t:?}"
                );
                assert!(t.iter().any(|x| matches!(x, IoTiming::Fsync { .. })), "one fdatasync: {t:?}");
            }
            SyncMode::Dsync => {
                assert!(
                    t.iter().any(|x| matches!(x, IoTiming::DurableWrite { bytes, entries: 1, .. } if aligned(*bytes))),
                    "one block-aligned durable write: {t:?}"
                );
                assert!(!t.iter().any(|x| matches!(x, IoTiming::Fsync { .. })), "no fdatasync: {t:?}");
            }
        }
        let mut again = Vec::new();
        wal.take_io_timings(&mut again);
        assert!(again.is_empty(), "taken once");
    });
}
