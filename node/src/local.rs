//! `skiff local`: a whole cluster on loopback, in the foreground, for a newcomer. It
//! picks ports, starts one `skiff serve` child per node (founding a new cluster in a
//! fresh data directory), prints where each listens, and on Ctrl-C (or when any node
//! dies) stops every child by pid and removes the data directory.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cli::LocalArgs;

/// How long stopped children get to exit on SIGTERM before SIGKILL.
pub const CHILD_STOP_GRACE: Duration = Duration::from_secs(10);

/// Addresses of one local node.
#[derive(Clone, Debug)]
pub struct LocalNode {
    pub id: u64,
    pub client: String,
    pub peer: String,
    pub admin: String,
    pub data_dir: PathBuf,
}

/// Free loopback ports: bound, read, released (a later bind could race another
/// process, which `skiff serve` then reports clearly).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Plans the nodes' addresses and data directories.
pub fn plan(nodes: u64, base_port: Option<u16>, root: &Path) -> std::io::Result<Vec<LocalNode>> {
    (1..=nodes)
        .map(|id| {
            let port = |offset: u16| -> std::io::Result<u16> {
                match base_port {
                    Some(b) => b.checked_add(offset + id as u16).ok_or_else(|| {
                        std::io::Error::other(format!("--base-port {b} + {} overflows", offset + id as u16))
                    }),
                    None => free_port(),
                }
            };
            Ok(LocalNode {
                id,
                client: format!("127.0.0.1:{}", port(0)?),
                peer: format!("127.0.0.1:{}", port(100)?),
                admin: format!("127.0.0.1:{}", port(200)?),
                data_dir: root.join(format!("node-{id}")),
            })
        })
        .collect()
}

/// The `skiff serve` arguments of `node` in the cluster `all`.
pub fn serve_args(node: &LocalNode, all: &[LocalNode], extra: &[String]) -> Vec<String> {
    let cluster: Vec<String> = all.iter().map(|n| format!("{}={}", n.id, n.peer)).collect();
    let mut args = vec![
        "serve".to_string(),
        "--id".into(),
        node.id.to_string(),
        "--cluster".into(),
        cluster.join(","),
        "--cluster-name".into(),
        "skiff-local".into(),
        "--client-addr".into(),
        node.client.clone(),
        "--admin-addr".into(),
        node.admin.clone(),
        "--data-dir".into(),
        node.data_dir.to_string_lossy().into_owned(),
        "--bootstrap".into(),
    ];
    args.extend(extra.iter().cloned());
    args
}

fn default_root() -> PathBuf {
    // /var/tmp is disk-backed on common distributions; /tmp is often tmpfs, which has
    // no O_DIRECT.
    PathBuf::from("/var/tmp").join(format!("skiff-local-{}", std::process::id()))
}

/// Sends SIGTERM to each running child, waits up to the grace period, then SIGKILLs
/// the rest. By pid only.
pub fn stop_children(children: &mut [Child]) {
    for c in children.iter() {
        // SAFETY: kill with a pid we spawned and still own (not yet waited for).
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + CHILD_STOP_GRACE;
    for c in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Runs `skiff local` until Ctrl-C or a node exits. Returns the process exit code.
pub fn run(args: &LocalArgs) -> i32 {
    if args.nodes == 0 || args.nodes > 9 {
        eprintln!("skiff local: --nodes must be between 1 and 9");
        return 2;
    }
    let root = args.data_dir.clone().unwrap_or_else(default_root);
    let owned_root = args.data_dir.is_none() || !root.exists();
    if let Err(e) = std::fs::create_dir_all(&root) {
        eprintln!("skiff local: cannot create {}: {e}", root.display());
        return 1;
    }
    let nodes = match plan(args.nodes, args.base_port, &root) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("skiff local: cannot pick ports: {e}");
            return 1;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skiff local: cannot find the skiff binary: {e}");
            return 1;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let mut children = Vec::new();
    for n in &nodes {
        // Each node in a process group of its own: Ctrl-C reaches only this process,
        // which then sends every node one SIGTERM (a node exits at once on a second
        // signal, so the terminal's SIGINT must not reach it too).
        let mut cmd = Command::new(&exe);
        cmd.args(serve_args(n, &nodes, &args.serve_args)).process_group(0);
        // A `skiff local` killed outright, which runs no clean-up, still stops its
        // nodes gracefully (their data directory stays). Nodes are spawned from the
        // main thread, which lives until they are stopped.
        skiff_net::child::signal_on_parent_death(&mut cmd, libc::SIGTERM, "skiff local");
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("skiff local: cannot start node {}: {e}", n.id);
                stop_children(&mut children);
                return 1;
            }
        }
    }
    println!("skiff local: {} nodes, data in {}", nodes.len(), root.display());
    println!("{:<5} {:<22} {:<22} {:<22}", "node", "client (redis-cli -p)", "peer", "admin (HTTP)");
    for n in &nodes {
        println!("{:<5} {:<22} {:<22} {:<22}", n.id, n.client, n.peer, n.admin);
    }
    let first_port = nodes[0].client.rsplit(':').next().unwrap_or("6379");
    println!("try: redis-cli -p {first_port} set hello world; curl http://{}/status", nodes[0].admin);
    println!("Ctrl-C stops the cluster.");
    let mut code = 0;
    'wait: while !stop.load(Ordering::Relaxed) {
        for (n, c) in nodes.iter().zip(children.iter_mut()) {
            if let Ok(Some(status)) = c.try_wait() {
                eprintln!("skiff local: node {} exited ({status}); stopping the others", n.id);
                code = 1;
                break 'wait;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_children(&mut children);
    if owned_root && !args.keep_data {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        println!("skiff local: data kept in {}", root.display());
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_with_a_base_port_is_deterministic() {
        let nodes = plan(3, Some(7000), Path::new("/d")).unwrap();
        assert_eq!(nodes[1].client, "127.0.0.1:7002");
        assert_eq!(nodes[1].peer, "127.0.0.1:7102");
        assert_eq!(nodes[2].admin, "127.0.0.1:7203");
        assert_eq!(nodes[0].data_dir, PathBuf::from("/d/node-1"));
        let args = serve_args(&nodes[0], &nodes, &["--tick-ms".into(), "50".into()]);
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--cluster" && w[1] == "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103")
        );
        assert_eq!(args.last().map(String::as_str), Some("50"));
        assert!(plan(3, Some(65500), Path::new("/d")).is_err(), "ports past 65535 are refused");
    }
}
