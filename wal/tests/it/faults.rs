//! Fail-stop: a failed fdatasync or write is never followed by an acknowledgement of
//! the batch it covered, nor of anything later, and the WAL refuses all further work
//! (fsyncgate: the kernel may have dropped the dirty data, and the next fsync would
//! succeed). ENOSPC while preparing a segment stops the WAL before any record that
//! needed that segment is acknowledged.

use skiff_wal::recovery::recover_files;
use skiff_wal::sim::WriteFate;
use skiff_wal::{Append, SimFs, SyncMode, Wal, WalError};

use crate::common::{IDENT, Model, SYNC_MODES, ent, run, sim_dir, small_opts_sync};

/// Appends `n` single-entry batches from index `from`, waiting for each completion.
async fn append_synced(wal: &Wal<SimFs>, model: &mut Model, from: u64, n: u64) {
    for i in from..from + n {
        let e = [ent(i, 1, 2000)];
        let a = Append { tag: i, entries: &e, must_sync: true, ..Default::default() };
        model.apply(&a);
        wal.submit(&a).await.unwrap();
        let c = wal.next_completion().await.unwrap();
        assert!(c.synced && c.tag == i);
    }
}

/// What a failed sync is called in the WAL's error: the fdatasync, or the durable write
/// whose flush failed.
fn sync_words(sync: SyncMode) -> &'static str {
    match sync {
        SyncMode::Dsync => "durable write of batch",
        SyncMode::Fdatasync => "fdatasync",
    }
}

fn fsync_failure_stops_without_ack(sync: SyncMode, errno: i32) {
    run(async move {
        let fs = SimFs::new();
        let mut model = Model::default();
        let wal = Wal::open(fs.clone(), small_opts_sync(&sim_dir(), sync)).await.unwrap();
        append_synced(&wal, &mut model, 1, 5).await;
        let durable = model.clone();

        fs.fail_fsync(0, errno);
        let e = [ent(6, 1, 2000)];
        wal.submit(&Append { tag: 6, entries: &e, must_sync: true, ..Default::default() }).await.unwrap();
        let err = wal.next_completion().await.unwrap_err();
        assert!(matches!(err, WalError::Stopped { .. }), "{err}");
        assert!(err.to_string().contains(sync_words(sync)), "{err}");
        assert!(wal.stopped().is_some());

        // Every later call reports the failure; nothing is ever acknowledged again,
        // even though the simulated disk would accept the next fsync.
        let e = [ent(7, 1, 10)];
        let later =
            wal.submit(&Append { tag: 7, entries: &e, must_sync: true, ..Default::default() }).await.unwrap_err();
        assert!(matches!(later, WalError::Stopped { .. }));
        assert!(matches!(wal.try_next_completion(), Err(WalError::Stopped { .. })));

        // After a crash the acknowledged records are all there.
        let crashed = fs.disk().crash(false, |_, _| WriteFate::Keep);
        let r = recover_files(&sim_dir(), IDENT, u64::MAX, &crashed.files_in(&sim_dir())).unwrap();
        assert!(r.last_index() >= durable.last_index());
        assert!(durable.matches(&r), "batch 6 was lost with its failed fsync");
    });
}

#[test]
fn fsync_eio_stops_the_wal_and_acknowledges_nothing_more() {
    for sync in SYNC_MODES {
        fsync_failure_stops_without_ack(sync, libc::EIO);
    }
}

#[test]
fn fsync_enospc_stops_the_wal_and_acknowledges_nothing_more() {
    for sync in SYNC_MODES {
        fsync_failure_stops_without_ack(sync, libc::ENOSPC);
    }
}

#[test]
fn write_failure_stops_the_wal() {
    for sync in SYNC_MODES {
        write_failure_stops(sync);
    }
}

fn write_failure_stops(sync: SyncMode) {
    run(async move {
        let fs = SimFs::new();
        let mut model = Model::default();
        let wal = Wal::open(fs.clone(), small_opts_sync(&sim_dir(), sync)).await.unwrap();
        append_synced(&wal, &mut model, 1, 3).await;
        fs.fail_write(0, libc::EIO);
        let e = [ent(4, 1, 10)];
        wal.submit(&Append { entries: &e, must_sync: false, ..Default::default() }).await.unwrap();
        let err = wal.next_completion().await.unwrap_err();
        assert!(err.to_string().contains("write of batch 4"), "{err}");
    });
}

#[test]
fn enospc_creating_a_segment_stops_before_acknowledging_records_that_need_it() {
    for sync in SYNC_MODES {
        enospc_creating_a_segment(sync);
    }
}

fn enospc_creating_a_segment(sync: SyncMode) {
    run(async move {
        let fs = SimFs::new();
        let dir = sim_dir();
        let mut model = Model::default();
        let wal = Wal::open(fs.clone(), small_opts_sync(&dir, sync)).await.unwrap();
        // The first segment and its first spare exist; the next creation fails.
        append_synced(&wal, &mut model, 1, 1).await;
        fs.fail_create(0, libc::ENOSPC);
        let mut acked = 1;
        let mut failure = None;
        for i in 2..200u64 {
            let e = [ent(i, 1, 3000)];
            let a = Append { tag: i, entries: &e, must_sync: true, ..Default::default() };
            if let Err(e) = wal.submit(&a).await {
                failure = Some(e);
                break;
            }
            match wal.next_completion().await {
                Ok(c) => acked = c.tag,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.expect("the disk filled up");
        assert!(failure.to_string().contains("No space left"), "{failure}");
        // Everything acknowledged fits in the two segments that could be prepared.
        let files = fs.files_in(&dir);
        assert_eq!(files.len(), 2, "{:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());
        let r = recover_files(&dir, IDENT, u64::MAX, &files).unwrap();
        assert!(r.last_index() >= acked, "acked {acked}, recovered {}", r.last_index());
    });
}
