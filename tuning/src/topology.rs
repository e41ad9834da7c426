//! CPU and NUMA topology, read from sysfs (`/sys/devices/system/cpu` and
//! `/sys/devices/system/node`), so that a configured CPU or NUMA node can be checked
//! before any executor is started on it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One online logical CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub id: u32,
    /// Physical core id within its package (hyperthread siblings share it).
    pub core: u32,
    pub package: u32,
    pub numa_node: u32,
}

/// The machine's online CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub cpus: Vec<Cpu>,
}

/// Why the topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot parse {text:?} as a CPU list")]
    Parse { path: PathBuf, text: String },
}

/// The value of field `key` in a `/proc/PID/status` text (`Key:\tvalue`), trimmed.
pub fn proc_status_field<'a>(proc_status: &'a str, key: &str) -> Option<&'a str> {
    proc_status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim)
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

fn read(path: PathBuf) -> Result<String, TopologyError> {
    std::fs::read_to_string(&path).map_err(|source| TopologyError::Io { path, source })
}

fn read_u32(path: PathBuf) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Topology {
    /// Reads the running machine's topology: its online CPUs that this process may
    /// run on (a container or `taskset` may allow fewer than the machine has online;
    /// pinning a shard to another fails).
    pub fn discover() -> Result<Topology, TopologyError> {
        let mut t = Topology::from_sysfs(Path::new("/sys/devices/system"))?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        t.keep_allowed(&status);
        Ok(t)
    }

    /// Keeps the CPUs in `Cpus_allowed_list` of a `/proc/PID/status` text (all of them
    /// when the line is missing or unreadable, or would leave none).
    pub fn keep_allowed(&mut self, proc_status: &str) {
        let allowed = proc_status_field(proc_status, "Cpus_allowed_list").and_then(parse_cpu_list);
        if let Some(allowed) = allowed
            && self.cpus.iter().any(|c| allowed.contains(&c.id))
        {
            self.cpus.retain(|c| allowed.contains(&c.id));
        }
    }

    /// Reads a topology from a sysfs-shaped tree rooted at `root` (`.../system`).
    /// Missing per-CPU details (containers hide some) default to core = cpu id,
    /// package 0, NUMA node 0.
    pub fn from_sysfs(root: &Path) -> Result<Topology, TopologyError> {
        let online_path = root.join("cpu/online");
        let text = read(online_path.clone())?;
        let ids = parse_cpu_list(&text).ok_or(TopologyError::Parse { path: online_path, text })?;
        let mut node_of = std::collections::BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(root.join("node")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(n) = name.strip_prefix("node").and_then(|n| n.parse::<u32>().ok()) else { continue };
                let list_path = e.path().join("cpulist");
                let text = read(list_path.clone())?;
                let cpus = parse_cpu_list(&text).ok_or(TopologyError::Parse { path: list_path, text })?;
                for c in cpus {
                    node_of.insert(c, n);
                }
            }
        }
        let cpus = ids
            .into_iter()
            .map(|id| {
                let t = root.join(format!("cpu/cpu{id}/topology"));
                Cpu {
                    id,
                    core: read_u32(t.join("core_id")).unwrap_or(id),
                    package: read_u32(t.join("physical_package_id")).unwrap_or(0),
                    numa_node: node_of.get(&id).copied().unwrap_or(0),
                }
            })
            .collect();
        Ok(Topology { cpus })
    }

    /// The online CPU `id`, if any.
    pub fn cpu(&self, id: u32) -> Option<&Cpu> {
        self.cpus.iter().find(|c| c.id == id)
    }

    /// NUMA nodes that have online CPUs.
    pub fn numa_nodes(&self) -> BTreeSet<u32> {
        self.cpus.iter().map(|c| c.numa_node).collect()
    }

    /// A compact description for error messages: `0-1 (NUMA node 0)`.
    pub fn describe(&self) -> String {
        self.numa_nodes()
            .iter()
            .map(|n| {
                let ids: Vec<String> =
                    self.cpus.iter().filter(|c| c.numa_node == *n).map(|c| c.id.to_string()).collect();
                format!("{} (NUMA node {n})", ids.join(","))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_reject_garbage() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a-b"), None);
    }

    #[test]
    fn only_the_cpus_this_process_may_use_are_kept() {
        let mut t = Topology { cpus: (0..4).map(|id| Cpu { id, core: id, package: 0, numa_node: id / 2 }).collect() };
        let mut all = t.clone();
        all.keep_allowed("Name:\tskiff\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\n");
        assert_eq!(all.cpus.iter().map(|c| c.id).collect::<Vec<_>>(), [0, 1], "a container's two CPUs");
        t.keep_allowed("Name:\tskiff\n");
        assert_eq!(t.cpus.len(), 4, "no list: all kept");
        t.keep_allowed("Cpus_allowed_list:\t9\n");
        assert_eq!(t.cpus.len(), 4, "a list naming none of them is not believed");
    }

    #[test]
    fn reads_a_two_node_tree() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let w = |p: &str, s: &str| {
            let path = r.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, s).unwrap();
        };
        w("cpu/online", "0-3\n");
        w("node/node0/cpulist", "0-1\n");
        w("node/node1/cpulist", "2-3\n");
        for c in 0..4 {
            w(&format!("cpu/cpu{c}/topology/core_id"), &format!("{}\n", c / 2));
            w(&format!("cpu/cpu{c}/topology/physical_package_id"), &format!("{}\n", c / 2));
        }
        let t = Topology::from_sysfs(r).unwrap();
        assert_eq!(t.cpus.len(), 4);
        assert_eq!(t.cpu(3), Some(&Cpu { id: 3, core: 1, package: 1, numa_node: 1 }));
        assert_eq!(t.numa_nodes().into_iter().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(t.describe(), "0,1 (NUMA node 0); 2,3 (NUMA node 1)");
        assert!(t.cpu(4).is_none());
    }

    #[test]
    fn this_machine_has_cpus() {
        let t = Topology::discover().expect("sysfs is readable");
        assert!(!t.cpus.is_empty());
    }
}
