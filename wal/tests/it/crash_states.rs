//! Crash states: a workload's writes, fsyncs and directory operations are recorded
//! (appends with truncations by a new leader, unsynced appends, compactions that
//! release and recycle segments, a snapshot install);
//! then, for every point in that sequence, the disk is rebuilt and crashed with its
//! unsynced writes dropped, kept, torn at several bytes or mixed at random, with and
//! without the unsynced directory changes. Every state must recover without error to
//! exactly the log after some append at or beyond the last one acknowledged — no
//! acknowledged record lost, nothing invented. A sample of states is then reopened,
//! appended to and crashed again, which exercises the stale-tail zeroing.

use rand::{Rng, SeedableRng, rngs::SmallRng};
use skiff_engine::{ConfState, HardState, SnapshotMeta};
use skiff_wal::recovery::{Recovered, recover_files};
use skiff_wal::sim::{SimDisk, TraceOp, WriteFate};
use skiff_wal::{Append, SimFs, SyncMode, Wal};

use crate::common::{IDENT, Model, ent, run, sim_dir, small_opts_sync};

/// At least this many crash states in the default run (issue 3).
const CRASH_STATES_MIN: usize = 10_000;

/// Runs a pipelined workload on a traced simulated disk; returns the trace (with a
/// `Note(seq)` wherever append `seq` was reported durable) and the model after each
/// append (`models[k]` = after append `k`).
fn record_workload(
    sync: SyncMode,
    seed: u64,
    start: Option<(SimDisk, Model)>,
    appends: u64,
) -> (Vec<TraceOp>, Vec<Model>, u64) {
    run(async move {
        let (fs, mut model) = match start {
            Some((disk, m)) => (SimFs::from_disk(disk), m),
            None => (SimFs::new(), Model { catchup_entries: catchup_entries(sync), ..Model::default() }),
        };
        fs.create_dir_for_test(&sim_dir());
        // Traced from before the open: recovery's own writes (zeroing a stale tail,
        // removing spares) are crash points too.
        fs.start_trace();
        let mut opts = small_opts_sync(&sim_dir(), sync);
        opts.catchup_entries = model.catchup_entries;
        let wal = std::rc::Rc::new(Wal::open(fs.clone(), opts).await.unwrap());
        let drain = {
            let (wal, fs) = (wal.clone(), fs.clone());
            glommio::spawn_local(async move {
                let mut n = 0;
                let mut first = None;
                while n < appends {
                    let c = wal.next_completion().await.unwrap();
                    first.get_or_insert(c.seq);
                    if c.synced {
                        fs.note(c.seq);
                    }
                    n += 1;
                }
                first.unwrap_or(0)
            })
        };
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut models = vec![model.clone()];
        let mut term = model.hard_state.term.max(1);
        for k in 1..=appends {
            if k == 60 {
                // A snapshot from the leader replaces the whole log (and is followed by
                // its first entries in the same append).
                term += 1;
                let meta = SnapshotMeta {
                    index: model.last_index() + 10,
                    term,
                    conf_state: ConfState::with_voters([1, 2, 4]),
                    election_timeout_ticks: 9,
                };
                let entries: Vec<_> = (meta.index + 1..meta.index + 3).map(|i| ent(i, term, 700)).collect();
                let a = Append {
                    tag: k,
                    install: Some(&meta),
                    entries: &entries,
                    hard_state: Some(HardState { term, vote: 0, commit: meta.index }),
                    must_sync: true,
                    ..Default::default()
                };
                model.apply(&a);
                wal.submit(&a).await.unwrap();
                models.push(model.clone());
                continue;
            }
            let last = model.last_index();
            let mut from = last + 1;
            if rng.gen_ratio(1, 8) && last > model.snapshot.index + 3 {
                // A new leader overwrites a short suffix (never below the commit index).
                term += 1;
                from = last - rng.gen_range(0..3);
            }
            from = from.max(model.hard_state.commit + 1).max(model.snapshot.index + 1);
            let n = rng.gen_range(0..4);
            let entries: Vec<_> = (from..from + n).map(|i| ent(i, term, rng.gen_range(1..5000))).collect();
            let new_last = if n > 0 { from + n - 1 } else { last };
            let commit = model.hard_state.commit.max(new_last.saturating_sub(4)).min(new_last);
            let hs = HardState { term, vote: 1, commit };
            let snap;
            let mut a = Append {
                tag: k,
                entries: &entries,
                hard_state: Some(hs),
                must_sync: !rng.gen_ratio(1, 10),
                ..Default::default()
            };
            if k % 25 == 0 && commit > model.snapshot.index {
                // A local snapshot at the commit index compacts the log.
                snap = SnapshotMeta {
                    index: commit,
                    term: if commit == model.snapshot.index {
                        model.snapshot.term
                    } else {
                        model_term(&model, &entries, commit)
                    },
                    conf_state: ConfState::with_voters([1, 2, 3]),
                    election_timeout_ticks: k as u32,
                };
                a.compact = Some(&snap);
            }
            model.apply(&a);
            wal.submit(&a).await.unwrap();
            models.push(model.clone());
        }
        let first = drain.await;
        (fs.trace(), models, first)
    })
}

/// Entries kept below each snapshot: the O_DSYNC workload keeps a catch-up tail (type-5
/// snapshot markers), the fdatasync one compacts to the snapshot (type 3).
fn catchup_entries(sync: SyncMode) -> u64 {
    match sync {
        SyncMode::Dsync => 5,
        SyncMode::Fdatasync => 0,
    }
}

/// Term of `index` in the model once `entries` are appended.
fn model_term(model: &Model, entries: &[skiff_engine::Entry], index: u64) -> u64 {
    if let Some(e) = entries.iter().find(|e| e.index == index) {
        return e.term;
    }
    model.term(index)
}

/// The index `k` (in `models`, offset so that `models[0]` is the state before the
/// first append of the life) such that the recovered log equals `models[k]`.
fn matching_model(r: &Recovered, models: &[Model], from: usize) -> Option<usize> {
    (from..models.len()).find(|&k| {
        let m = &models[k];
        m.last_index() == r.last_index() && m.hard_state == r.hard_state && m.matches(r)
    })
}

/// Crash fates for a state with `u` unsynced writes.
fn fates(u: usize, rng: &mut SmallRng) -> Vec<Vec<WriteFate>> {
    let mut out = vec![vec![WriteFate::Drop; u], vec![WriteFate::Keep; u]];
    for i in 0..u {
        for n in [1usize, 2048, 4095] {
            let mut keep = vec![WriteFate::Keep; u];
            keep[i] = WriteFate::Tear(n);
            out.push(keep);
            let mut drop = vec![WriteFate::Drop; u];
            drop[i] = WriteFate::Tear(n);
            out.push(drop);
        }
    }
    for _ in 0..8 {
        out.push(
            (0..u)
                .map(|_| match rng.gen_range(0..3) {
                    0 => WriteFate::Keep,
                    1 => WriteFate::Drop,
                    _ => WriteFate::Tear(rng.gen_range(0..8192)),
                })
                .collect(),
        );
    }
    out
}

/// Walks every crash point of `trace` applied on top of `base`; `acked_floor` is the
/// model index already acknowledged before the trace. Calls `visit` for each crash
/// state with the crashed disk and the index of the model it recovered to.
fn enumerate(
    base: &SimDisk,
    trace: &[TraceOp],
    models: &[Model],
    acked_floor: usize,
    seq_to_model: impl Fn(u64) -> usize,
    seed: u64,
    mut visit: impl FnMut(&SimDisk, usize),
) -> usize {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut disk = base.clone();
    let mut acked = acked_floor;
    let mut states = 0;
    for p in 0..=trace.len() {
        if p > 0 {
            disk.apply(&trace[p - 1]);
            if let TraceOp::Note(seq) = trace[p - 1] {
                acked = acked.max(seq_to_model(seq));
            }
        }
        for keep_dir in [false, true] {
            let u = disk.unsynced_writes(keep_dir);
            for fate in fates(u, &mut rng) {
                let crashed = disk.crash(keep_dir, |i, _| fate[i]);
                let files = crashed.files_in(&sim_dir());
                let r = recover_files(&sim_dir(), IDENT, u64::MAX, &files).unwrap_or_else(|e| {
                    panic!("crash after op {p} (dir changes kept: {keep_dir}, fates {fate:?}): {e}")
                });
                let k = matching_model(&r, models, acked).unwrap_or_else(|| {
                    panic!(
                        "crash after op {p} (dir {keep_dir}, fates {fate:?}): recovered last index {} hs {:?} \
                         matches no state at or after acknowledged append {acked}",
                        r.last_index(),
                        r.hard_state
                    )
                });
                visit(&crashed, k);
                states += 1;
            }
        }
    }
    states
}

/// `O_DSYNC` writes, several in flight: a crash can keep a later write and lose an
/// earlier one.
#[test]
fn every_crash_state_recovers_every_acknowledged_append_dsync() {
    every_crash_state_recovers_every_acknowledged_append(SyncMode::Dsync);
}

/// Writes overlapping the previous fdatasync.
#[test]
fn every_crash_state_recovers_every_acknowledged_append_fdatasync() {
    every_crash_state_recovers_every_acknowledged_append(SyncMode::Fdatasync);
}

fn every_crash_state_recovers_every_acknowledged_append(sync: SyncMode) {
    let (trace, models, first) = record_workload(sync, 42, None, 90);
    assert_eq!(first, 1);
    let released = trace.iter().any(|op| match op {
        TraceOp::Remove { .. } => true,
        TraceOp::Rename { from, .. } => from.extension().is_some_and(|x| x == "wal"),
        _ => false,
    });
    assert!(released, "the workload rotates, compacts and releases (recycles) segments");
    let mut samples = Vec::new();
    let states = enumerate(
        &SimDisk::default(),
        &trace,
        &models,
        0,
        |seq| seq as usize,
        7,
        |disk, k| {
            samples.push((disk.clone(), k));
        },
    );
    assert!(states >= CRASH_STATES_MIN, "only {states} crash states");

    // Second life on a sample of crashed disks: reopen (zeroing stale tails, removing
    // spares), append, and crash again at every point of that.
    let mut second = 0;
    let step = samples.len() / 12;
    for (i, (disk, k)) in samples.into_iter().enumerate().step_by(step) {
        let start = models[k].clone();
        let (trace2, models2, first2) = record_workload(sync, 1000 + i as u64, Some((disk.clone(), start)), 6);
        // Seq `first2 + j` is the (j + 1)-th append of the second life: models2[j + 1].
        second += enumerate(&disk, &trace2, &models2, 0, |seq| (seq - first2 + 1) as usize, i as u64, |_, _| {});
    }
    assert!(second > 1000, "only {second} second-life crash states");
    eprintln!("crash states ({}): {states} first life, {second} second life", sync.name());
}

/// A process killed after a write reached the device but before any flush covered it
/// (no power loss): the next open reads that batch back and from then on counts it as
/// persisted (the engine's log, and a new segment's first write waits only for what
/// the WAL believes durable). So open must flush it before returning: a power loss
/// right after the open keeps everything the open recovered.
#[test]
fn what_open_recovers_survives_a_power_loss_right_after_it() {
    for sync in [SyncMode::Dsync, SyncMode::Fdatasync] {
        let (trace, _, _) = record_workload(sync, 7, None, 8);
        // Every prefix that ends with a write: the process killed right after it.
        let mut checked = 0;
        for (w, _) in trace.iter().enumerate().filter(|(_, op)| matches!(op, TraceOp::Write { .. })) {
            let killed = SimDisk::replay(&trace[..=w]);
            let (recovered, after_power_loss) = run(async move {
                let fs = SimFs::from_disk(killed);
                let wal = Wal::open(fs.clone(), small_opts_sync(&sim_dir(), sync)).await.unwrap();
                let last = skiff_engine::Storage::last_index(&wal.storage());
                drop(wal);
                let lost_power = fs.disk().crash(true, |_, _| WriteFate::Drop);
                let files = lost_power.files_in(&sim_dir());
                (last, recover_files(&sim_dir(), IDENT, u64::MAX, &files).map(|r| r.last_index()))
            });
            assert_eq!(after_power_loss.unwrap(), recovered, "{}: killed after trace op {w}", sync.name());
            checked += 1;
        }
        assert!(checked > 8, "{checked} kill points");
    }
}

/// Killed, not crashed: the first life's process dies after a sample of its trace's
/// points, with writes that reached the device but no flush yet (they read back). The
/// second life opens that disk, appends through rotations, and every crash point of it
/// (its open included) must recover to a state at or after the last acknowledged append
/// of either life. A crash before the open's flush may lose the first life's unflushed
/// appends (never acknowledged); one after it may not, since from then on the WAL and
/// the engine count them as persisted.
#[test]
fn every_crash_state_after_a_killed_life_recovers_every_acknowledged_append() {
    let mut second = 0;
    for sync in [SyncMode::Dsync, SyncMode::Fdatasync] {
        let (trace, models, _) = record_workload(sync, 43, None, 90);
        // The points that leave unflushed writes behind: the process killed there.
        let mut points = Vec::new();
        let mut disk = SimDisk::default();
        for (p, op) in trace.iter().enumerate() {
            disk.apply(op);
            if disk.unsynced_writes(true) > 0 {
                points.push(p);
            }
        }
        let step = (points.len() / 10).max(1);
        let mut kills = 0;
        for &p in points.iter().step_by(step) {
            let disk = SimDisk::replay(&trace[..=p]);
            let acked = trace[..=p]
                .iter()
                .filter_map(|op| if let TraceOp::Note(seq) = op { Some(*seq as usize) } else { None })
                .max()
                .unwrap_or(0);
            let seen = recover_files(&sim_dir(), IDENT, u64::MAX, &disk.files_in(&sim_dir()))
                .unwrap_or_else(|e| panic!("{}: killed after op {p}: {e}", sync.name()));
            let k = matching_model(&seen, &models, acked)
                .unwrap_or_else(|| panic!("{}: killed after op {p}: no model matches", sync.name()));
            let start = Some((disk.clone(), models[k].clone()));
            let (trace2, models2, first2) = record_workload(sync, 2000 + p as u64, start, 24);
            // Life one's states up to what the second life starts from, then the second
            // life's (models2[0] is models[k]).
            let all: Vec<Model> = models[..=k].iter().chain(&models2[1..]).cloned().collect();
            let to_model = |seq: u64| k + (seq - first2 + 1) as usize;
            second += enumerate(&disk, &trace2, &all, acked, to_model, p as u64, |_, _| {});
            kills += 1;
        }
        assert!(kills >= 5, "{}: only {kills} kill points", sync.name());
    }
    assert!(second > 1000, "only {second} crash states after a kill");
    eprintln!("crash states after a killed life: {second}");
}
