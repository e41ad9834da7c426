//! A runner killed outright (SIGKILL, as a CI timeout does) leaves no node running.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie still exists until reaped by init, so also
    // look at its state.
    // SAFETY: kill(2) with signal 0 sends nothing and touches no memory.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true);
    exists && !zombie
}

#[test]
fn nodes_die_with_a_killed_runner() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("killed-runner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A stand-in for `skiff`: records its pid and sleeps (it never listens, so the
    // runner is still waiting for the nodes when it is killed).
    let fake = dir.join("fake-skiff");
    std::fs::write(&fake, "#!/bin/sh\necho $$ >> \"$FAKE_PIDS\"\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pids_file = dir.join("pids");
    let mut runner = Command::new(env!("CARGO_BIN_EXE_skiff-chaos"))
        .args(["--quiet", "--seed", "1", "--skiff-bin"])
        .arg(&fake)
        .arg("--work-dir")
        .arg(&dir)
        .env("FAKE_PIDS", &pids_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read_pids = || -> Vec<i32> {
        std::fs::read_to_string(&pids_file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_pids().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = read_pids();
    runner.kill().unwrap(); // SIGKILL: no clean-up runs in the runner
    runner.wait().unwrap();
    assert_eq!(pids.len(), 3, "the runner started three nodes");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        // SAFETY: as above; only our own stand-ins are signalled.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(left.is_empty(), "nodes {left:?} outlived the killed runner");
}
