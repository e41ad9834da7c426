//! Torn tail: the last write is cut at every byte offset — the file truncated there,
//! the rest of the write zero-filled, or filled with garbage. Recovery must keep every
//! record that was durable before that write and nothing of it unless it is whole, and
//! a WAL reopened on each such disk must append after the surviving records without
//! ever resurrecting a piece of the torn write.

use rand::{Rng, SeedableRng, rngs::SmallRng};
use skiff_engine::HardState;
use skiff_wal::format::{BATCH_HEADER_BYTES, BLOCK_BYTES, BatchHeader};
use skiff_wal::recovery::recover_files;
use skiff_wal::sim::SimDisk;
use skiff_wal::{Append, SimFs, Wal};

use crate::common::{IDENT, Model, ent, run, sim_dir, small_opts};

struct Scenario {
    before: Model,
    after: Model,
    /// The disk after the last batch was written and synced.
    disk: SimDisk,
    file: String,
    /// Where the last batch starts and its padded length.
    off: usize,
    len: usize,
    /// Header plus records: the bytes that must all arrive for the batch to count.
    needed: usize,
}

/// Five durable single-entry batches, then the last batch `last` built from
/// `entries_in_last` entries of `entry_len` bytes plus a hard state.
fn scenario(entries_in_last: u64, entry_len: usize) -> Scenario {
    run(async move {
        let fs = SimFs::new();
        let mut model = Model::default();
        let wal = Wal::open(fs.clone(), small_opts(&sim_dir())).await.unwrap();
        for i in 1..=5u64 {
            let e = [ent(i, 1, 1000)];
            let a = Append {
                entries: &e,
                hard_state: Some(HardState { term: 1, vote: 1, commit: i - 1 }),
                must_sync: true,
                ..Default::default()
            };
            model.apply(&a);
            wal.submit(&a).await.unwrap();
            wal.next_completion().await.unwrap();
        }
        let before_files = fs.files_in(&sim_dir());
        let before = model.clone();
        let e: Vec<_> = (6..6 + entries_in_last).map(|i| ent(i, 2, entry_len)).collect();
        let a = Append {
            entries: &e,
            hard_state: Some(HardState { term: 2, vote: 3, commit: 5 }),
            must_sync: true,
            ..Default::default()
        };
        model.apply(&a);
        wal.submit(&a).await.unwrap();
        wal.next_completion().await.unwrap();
        let after_files = fs.files_in(&sim_dir());
        assert_eq!(before_files.len(), after_files.len(), "the last batch stays in its segment");
        let (name, new) = after_files
            .iter()
            .zip(&before_files)
            .find(|(a, b)| a.1 != b.1)
            .map(|(a, _)| (a.0.clone(), a.1.clone()))
            .expect("the last batch changed a file");
        let old = &before_files.iter().find(|f| f.0 == name).unwrap().1;
        let first_diff = (0..new.len()).find(|&i| new[i] != old[i]).unwrap();
        let off = first_diff / BLOCK_BYTES * BLOCK_BYTES;
        let h = BatchHeader::decode(&new[off..]).expect("the last batch starts at a block");
        Scenario {
            before,
            after: model,
            disk: fs.disk(),
            file: name,
            off,
            len: h.padded_bytes(),
            needed: BATCH_HEADER_BYTES + h.body_bytes as usize,
        }
    })
}

#[derive(Clone, Copy, Debug)]
enum Cut {
    Truncate,
    Zero,
    Garbage,
}

fn torn_image(s: &Scenario, k: usize, cut: Cut, rng: &mut SmallRng) -> Vec<(String, Vec<u8>)> {
    let mut files = s.disk.files_in(&sim_dir());
    let f = &mut files.iter_mut().find(|f| f.0 == s.file).unwrap().1;
    let end = s.off + s.len;
    match cut {
        Cut::Truncate => f.truncate(s.off + k),
        Cut::Zero => f[s.off + k..end].fill(0),
        Cut::Garbage => rng.fill(&mut f[s.off + k..end]),
    }
    files
}

/// True when the cut left every meaningful byte of the last batch as written (cutting
/// zeroes into bytes that were zero, or into the padding, changes nothing).
fn intact(s: &Scenario, files: &[(String, Vec<u8>)]) -> bool {
    let f = &files.iter().find(|f| f.0 == s.file).unwrap().1;
    let orig = &s.disk.files_in(&sim_dir()).into_iter().find(|f| f.0 == s.file).unwrap().1;
    f.len() >= s.off + s.len && f[s.off..s.off + s.needed] == orig[s.off..s.off + s.needed]
}

fn check_every_offset(s: &Scenario) -> usize {
    let mut rng = SmallRng::seed_from_u64(0x7e4);
    let mut states = 0;
    for k in 0..=s.len {
        for cut in [Cut::Truncate, Cut::Zero, Cut::Garbage] {
            let files = torn_image(s, k, cut, &mut rng);
            let r = recover_files(&sim_dir(), IDENT, u64::MAX, &files)
                .unwrap_or_else(|e| panic!("{cut:?} at byte {k}: {e}"));
            let whole = intact(s, &files);
            let want = if whole { &s.after } else { &s.before };
            assert!(want.matches(&r), "{cut:?} at byte {k}: recovered {} entries, hs {:?}", r.locs.len(), r.hard_state);
            if let Some(t) = &r.torn_tail {
                assert!(!whole, "{cut:?} at {k}: a whole batch reported torn");
                assert_eq!(t.offset as usize, s.off, "torn tail names the batch offset");
                assert!(t.file.ends_with(&s.file));
            }
            states += 1;
        }
    }
    states
}

#[test]
fn last_batch_torn_at_every_byte_keeps_exactly_the_durable_records() {
    // Three entries of 3000 bytes and a hard state: a batch of three blocks.
    let s = scenario(3, 3000);
    assert_eq!(s.len, 3 * BLOCK_BYTES);
    let states = check_every_offset(&s);
    assert_eq!(states, 3 * (s.len + 1));
}

#[test]
fn last_record_torn_at_every_byte_keeps_exactly_the_durable_records() {
    // One entry and the hard state record that closes the batch: every byte of the last
    // record is a cut point.
    let s = scenario(1, 200);
    assert_eq!(s.len, BLOCK_BYTES);
    check_every_offset(&s);
}

#[test]
fn reopening_a_torn_disk_appends_cleanly_and_never_resurrects_torn_bytes() {
    let s = scenario(3, 3000);
    let mut rng = SmallRng::seed_from_u64(9);
    let ks: Vec<usize> = (0..=s.len).step_by(211).chain([s.needed - 1, s.needed, s.len]).collect();
    for k in ks {
        for cut in [Cut::Zero, Cut::Garbage] {
            let files = torn_image(&s, k, cut, &mut rng);
            let fs = SimFs::new();
            fs.create_dir_for_test(&sim_dir());
            for (name, content) in &files {
                fs.plant(&sim_dir().join(name), content.clone());
            }
            let whole = intact(&s, &files);
            let mut model = if whole { s.after.clone() } else { s.before.clone() };
            run(async move {
                let wal = Wal::open(fs.clone(), small_opts(&sim_dir())).await.unwrap();
                model.assert_storage(&wal.storage());
                // One short batch: if stale bytes of the torn write were left behind it,
                // they would sit right after it on the next recovery.
                let next = model.last_index() + 1;
                let e = [ent(next, 3, 10)];
                let a = Append { entries: &e, must_sync: true, ..Default::default() };
                model.apply(&a);
                wal.submit(&a).await.unwrap();
                wal.next_completion().await.unwrap();
                drop(wal);
                let r = recover_files(&sim_dir(), IDENT, u64::MAX, &fs.files_in(&sim_dir()))
                    .unwrap_or_else(|e| panic!("{cut:?} at {k}: {e}"));
                assert!(model.matches(&r), "{cut:?} at {k}: stale bytes came back");
                assert_eq!(r.torn_tail, None, "{cut:?} at {k}");
            });
        }
    }
}
