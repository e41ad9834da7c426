//! The few operating-system calls std does not offer: sending a signal to a child by
//! pid, tying a child's life to this process, this process's CPU time, and the CPU time
//! of another process from `/proc`.
//!
//! This is the crate's only module with `unsafe`: a few libc calls, each with its
//! safety argument next to it.
#![allow(unsafe_code)]

use std::time::Duration;

/// Sends `signal` to the process `pid`. Used only with pids of children this process
/// spawned and has not yet reaped, so the pid cannot have been reused by another
/// process.
pub fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// User plus system CPU time this process has used so far (all threads).
pub fn self_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the pointer, which is valid and
    // properly aligned for it; RUSAGE_SELF cannot fail with a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: zero-initialised and filled in by a successful getrusage.
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Clock ticks per second, the unit of the CPU times in `/proc/PID/stat`.
fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is touched.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // 100 is the value on every Linux architecture where the call could fail.
    if t > 0 { t as u64 } else { 100 }
}

/// User plus system CPU time of process `pid` so far, from `/proc/PID/stat`; `None`
/// when the process is gone or the file cannot be read.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_cpu_ticks(&stat)?;
    let per_sec = clock_ticks_per_sec();
    Some(Duration::from_secs(ticks / per_sec) + Duration::from_nanos((ticks % per_sec) * 1_000_000_000 / per_sec))
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks. The
/// command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first; utime is field 14, stime 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_is_readable_both_ways() {
        // Burn a little CPU so both clocks are past zero.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(self_cpu() > Duration::ZERO);
        assert!(process_cpu(std::process::id()).is_some());
        assert!(process_cpu(u32::MAX).is_none());
    }
}
