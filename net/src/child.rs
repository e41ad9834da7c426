//! Child-process plumbing for the programs that start Skiff nodes (`skiff local`,
//! `skiff-bench --spawn`, `skiff-chaos`). It lives here because all three depend on
//! this crate for the wire formats, and none of them on each other.

use std::process::Command;

/// Makes the child `cmd` starts receive `signal` when this process dies, however it
/// dies (`PR_SET_PDEATHSIG`): a parent killed with SIGKILL, which runs no clean-up,
/// still leaves no node behind. `parent_name` names the parent in the error a child
/// reports when the parent died before the signal was armed.
///
/// Linux ties the signal to the *thread* that spawns the child: spawn from a thread
/// that lives as long as the child should.
pub fn signal_on_parent_death(cmd: &mut Command, signal: libc::c_int, parent_name: &'static str) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and makes only two
    // async-signal-safe system calls, touching no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would send it.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other(format!("{parent_name} exited while starting this process")));
            }
            Ok(())
        });
    }
}
