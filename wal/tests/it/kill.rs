//! A real process appending under load is killed with SIGKILL at an arbitrary point,
//! again and again; after every kill each record it had reported durable must be on
//! disk, and the next process must recover and carry on.
//!
//! The child is this test binary run again with `SKIFF_WAL_KILL_CHILD_DIR` set,
//! executing only `kill::child_appender`. It prints `@@durable INDEX TERM` after each
//! append whose fdatasync completed (everything up to INDEX, of TERM, is durable).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use skiff_engine::{HardState, SnapshotMeta, Storage};
use skiff_wal::{Append, DmaFs, Wal, WalOptions};

use crate::common::{IDENT, TestDir, ent, run};

const CHILD_ENV: &str = "SKIFF_WAL_KILL_CHILD_DIR";
/// Kill/restart rounds in the default run.
const ROUNDS: u64 = 8;
/// The child stops by itself after this many appends, so a child whose parent
/// vanished without killing it still ends.
const CHILD_APPENDS_MAX: u64 = 200_000;

fn opts(dir: &Path) -> WalOptions {
    let mut o = WalOptions::new(dir, IDENT);
    // Small segments so the kills land around rotations and releases too.
    o.segment_bytes = 256 * 1024;
    o.spare_segments = 2;
    o
}

/// Kills and reaps the child on every exit path.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "the child process of sigkill_while_appending_never_loses_a_durable_record; \
            it does nothing unless SKIFF_WAL_KILL_CHILD_DIR is set"]
fn child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    run(async move {
        let wal = Rc::new(Wal::open(DmaFs, opts(Path::new(&dir))).await.unwrap());
        let storage = wal.storage();
        let term = storage.hard_state().term + 1;
        println!("@@recovered {} {}", storage.first_index(), storage.last_index());
        let pending: Rc<RefCell<VecDeque<(u64, u64)>>> = Rc::default();
        let durable = Rc::new(std::cell::Cell::new(storage.last_index()));
        {
            let (wal, pending, durable) = (wal.clone(), pending.clone(), durable.clone());
            glommio::spawn_local(async move {
                loop {
                    let c = wal.next_completion().await.unwrap();
                    let (seq, last) = pending.borrow_mut().pop_front().unwrap();
                    assert_eq!(seq, c.seq);
                    if c.synced {
                        durable.set(last);
                        println!("@@durable {last} {term}");
                    }
                }
            })
            .detach();
        }
        let mut rng = SmallRng::seed_from_u64(term);
        for k in 0..CHILD_APPENDS_MAX {
            let first = storage.last_index() + 1;
            let n = rng.gen_range(1..16);
            let entries: Vec<_> = (first..first + n).map(|i| ent(i, term, rng.gen_range(50..2000))).collect();
            let last = first + n - 1;
            let snap;
            let mut a = Append {
                tag: k,
                entries: &entries,
                hard_state: Some(HardState { term, vote: 1, commit: durable.get() }),
                must_sync: true,
                ..Default::default()
            };
            let cut = durable.get().saturating_sub(50);
            if k % 100 == 99 && cut > storage.snapshot_meta().index {
                snap = SnapshotMeta { index: cut, term: storage.term(cut).unwrap(), ..Default::default() };
                a.compact = Some(&snap);
            }
            let seq = wal.submit(&a).await.unwrap();
            pending.borrow_mut().push_back((seq, last));
        }
    });
}

/// Checks, in this process, that every record claimed durable is on disk.
fn verify(dir: &Path, claims: &[(u64, u64)]) -> (u64, u64) {
    let dir = dir.to_path_buf();
    let claims = claims.to_vec();
    run(async move {
        let wal = Wal::open(DmaFs, opts(&dir)).await.unwrap();
        let s = wal.storage();
        let (first, last) = (s.first_index(), s.last_index());
        for &(upto, term) in &claims {
            assert!(last >= upto, "durable up to {upto} claimed, log ends at {last}");
            if upto < first {
                // Covered by the snapshot the child compacted to.
                continue;
            }
            let lo = first.max(upto.saturating_sub(20));
            let mut out = Vec::new();
            s.entries(lo, upto + 1, u64::MAX, &mut out).unwrap();
            let e = out.last().unwrap();
            assert_eq!((e.index, e.term), (upto, term), "claimed entry");
            assert_eq!(*e, ent(upto, term, e.data.len()), "entry {upto} content");
        }
        // Every entry still in the log is intact and well formed.
        let mut out = Vec::new();
        s.entries(first, last + 1, u64::MAX, &mut out).unwrap();
        for w in out.windows(2) {
            assert_eq!(w[0].index + 1, w[1].index);
            assert!(w[0].term <= w[1].term);
        }
        for e in &out {
            assert_eq!(*e, ent(e.index, e.term, e.data.len()), "entry {}", e.index);
        }
        wal.close().await.unwrap();
        (first, last)
    })
}

#[test]
fn sigkill_while_appending_never_loses_a_durable_record() {
    kill_rounds("sigkill", ROUNDS);
}

/// The long version: `cargo test -p skiff-wal --release --test it soak_sigkill --
/// --ignored --nocapture` (200 kill/restart rounds).
#[test]
#[ignore = "soak: 200 rounds; run explicitly"]
fn soak_sigkill_200_rounds() {
    kill_rounds("sigkill-soak", 200);
}

fn kill_rounds(name: &str, rounds: u64) {
    let dir = TestDir::new(name);
    // The children's stderr goes next to the WAL directory, never into it.
    let logs = TestDir::new(&format!("{name}-logs"));
    std::fs::create_dir_all(&logs.0).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = SmallRng::seed_from_u64(0x5161);
    let mut total_claims = 0;
    for round in 0..rounds {
        let stderr_path = logs.0.join(format!("child-{round}.stderr"));
        let child = Command::new(&exe)
            .args(["kill::child_appender", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir.0)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut guard = ChildGuard(child);
        let stdout = guard.0.stdout.take().unwrap();
        // Kill after a random number of durable reports: somewhere in the middle of
        // appends, fsyncs, rotations and compactions.
        let kill_after = rng.gen_range(20..600);
        let mut claims = Vec::new();
        let mut lines = BufReader::new(stdout).lines();
        while claims.len() < kill_after {
            let Some(Ok(line)) = lines.next() else {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("round {round}: child ended early:\n{err}");
            };
            if let Some(rest) = line.split("@@durable ").nth(1) {
                let mut it = rest.split_whitespace().map(|x| x.parse::<u64>().unwrap());
                claims.push((it.next().unwrap(), it.next().unwrap()));
            }
        }
        guard.0.kill().unwrap();
        // Lines already written before the kill may still be in the pipe; they are
        // claims too.
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.split("@@durable ").nth(1) {
                let mut it = rest.split_whitespace().map(|x| x.parse::<u64>().unwrap());
                if let (Some(a), Some(b)) = (it.next(), it.next()) {
                    claims.push((a, b));
                }
            }
        }
        let status = guard.0.wait().unwrap();
        assert!(!status.success(), "round {round}: the child was killed");
        drop(guard);
        total_claims += claims.len();
        let (first, last) = verify(&dir.0, &claims);
        assert!(last >= claims.last().unwrap().0);
        eprintln!("round {round}: {} durable reports, log [{first}, {last}]", claims.len());
    }
    assert!(total_claims as u64 >= 20 * rounds);
}
