//! Command-line interface: `skiff serve` (every config key is also a flag, and a flag
//! overrides the file), `skiff local`, `skiff tune`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Skiff: a Raft-replicated key-value store that speaks the Redis protocol.
#[derive(Debug, Parser)]
#[command(name = "skiff", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Run a whole cluster on loopback in the foreground (Ctrl-C stops it).
    Local(LocalArgs),
    /// Show this machine's CPUs and NUMA nodes and suggest where to pin the shard.
    Tune,
}

/// `skiff serve`: each flag is the config key of the same name (`-` for `_`).
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML config file; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id (a member of --cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// Every member's peer address: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long)]
    pub cluster: Option<String>,
    /// Cluster name; data directories and peers of another cluster are refused (default skiff).
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// RESP listen address (default 127.0.0.1:6379).
    #[arg(long)]
    pub client_addr: Option<String>,
    /// Admin HTTP listen address (default 127.0.0.1:7379).
    #[arg(long)]
    pub admin_addr: Option<String>,
    /// Directory for the identity file, WAL and snapshots; disk-backed, not tmpfs.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// CPU to pin the shard to (unset: unpinned).
    #[arg(long)]
    pub cpu: Option<u32>,
    /// NUMA node --cpu must be on; a check only, it does not pin (unset: unchecked).
    #[arg(long)]
    pub numa_node: Option<u32>,
    /// Milliseconds per Raft tick, 1 to 10000 (default 100).
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Leader heartbeat interval in ticks, less than --election-ticks (default 1).
    #[arg(long)]
    pub heartbeat_ticks: Option<u32>,
    /// Election timeout in ticks, more than --heartbeat-ticks, at most 1048576 (default 10).
    #[arg(long)]
    pub election_ticks: Option<u32>,
    /// Run a PreVote round before an election: true or false (default true).
    #[arg(long)]
    pub pre_vote: Option<bool>,
    /// Leaders without a quorum step down: true or false (default true; lease reads need it).
    #[arg(long)]
    pub check_quorum: Option<bool>,
    /// How reads are confirmed: safe (ReadIndex, the default) or lease (needs --check-quorum true).
    #[arg(long)]
    pub read_mode: Option<String>,
    /// Bytes of log entries per append message (default 1048576).
    #[arg(long)]
    pub max_size_per_msg: Option<u64>,
    /// Append messages in flight per follower (default 512).
    #[arg(long)]
    pub max_inflight_msgs: Option<usize>,
    /// Largest peer frame body; at least the larger of --max-size-per-msg and the largest
    /// client entry (8650816), plus 65536 (default 16777216).
    #[arg(long)]
    pub frame_bytes_max: Option<u64>,
    /// WAL segment size: 4194304 to 2147483648, a multiple of 4096 (default 67108864).
    #[arg(long)]
    pub wal_segment_bytes: Option<u64>,
    /// Applied log bytes since the last snapshot that trigger a new one (default 67108864).
    #[arg(long)]
    pub snapshot_log_bytes: Option<u64>,
    /// Entries kept below each snapshot for followers a little behind (0..=10000000,
    /// default 5000).
    #[arg(long)]
    pub snapshot_catchup_entries: Option<u64>,
    /// Bound on the WAL bytes of those entries (default 67108864).
    #[arg(long)]
    pub snapshot_catchup_bytes: Option<u64>,
    /// WAL appends not yet durable before the shard stops taking new batches (1..=8, default 4).
    #[arg(long)]
    pub wal_writes_in_flight: Option<u64>,
    /// How the WAL makes an append durable: dsync (one O_DSYNC write per append, several
    /// in flight; default) or fdatasync (write, then fdatasync).
    #[arg(long)]
    pub wal_sync: Option<String>,
    /// Client connections open at once (default 10000).
    #[arg(long)]
    pub max_clients: Option<usize>,
    /// Unanswered writes before clients get OVERLOADED (default 65536).
    #[arg(long)]
    pub max_pending_proposals: Option<usize>,
    /// Unanswered reads before clients get OVERLOADED (default 65536).
    #[arg(long)]
    pub max_pending_reads: Option<usize>,
    /// Milliseconds a request may wait before TRYAGAIN or TIMEOUT (default 5000).
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Warn when one WAL fdatasync takes longer, in milliseconds (default 100; 0: never).
    #[arg(long)]
    pub fsync_warn_ms: Option<u64>,
    /// Warn when applying one batch takes longer, in milliseconds (default 100; 0: never).
    #[arg(long)]
    pub apply_warn_ms: Option<u64>,
    /// Found a new cluster if the data directory is empty (first start only);
    /// --bootstrap=false overrides `bootstrap = true` in the config file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub bootstrap: Option<bool>,
    /// Start empty and wait to be added by the leader; --join=false overrides the file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub join: Option<bool>,
}

/// `skiff local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// First port: node i listens on BASE+i (client), BASE+100+i (peer) and
    /// BASE+200+i (admin). Default: free ports picked at start.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Where the nodes' data directories go (it must support O_DIRECT: not tmpfs).
    /// A directory that does not exist yet is created, and removed with everything in
    /// it on exit unless --keep-data is given; one that already existed is kept.
    /// Default: a new directory under /var/tmp, removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the data directory on exit, even one skiff local created.
    #[arg(long)]
    pub keep_data: bool,
    /// Extra flags passed to every `skiff serve`, e.g. -- --tick-ms 50.
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

fn put<T: Into<toml::Value>>(t: &mut toml::Table, key: &str, v: Option<T>) {
    if let Some(v) = v {
        t.insert(key.to_string(), v.into());
    }
}

fn put_int<T: TryInto<i64>>(t: &mut toml::Table, key: &str, v: Option<T>) -> Result<(), String> {
    if let Some(v) = v {
        let n: i64 = v.try_into().map_err(|_| format!("--{} is too large", key.replace('_', "-")))?;
        t.insert(key.to_string(), toml::Value::Integer(n));
    }
    Ok(())
}

impl ServeArgs {
    /// The flags given, as config keys.
    pub fn overrides(&self) -> Result<toml::Table, String> {
        let mut t = toml::Table::new();
        put_int(&mut t, "id", self.id)?;
        put(&mut t, "cluster", self.cluster.clone());
        put(&mut t, "cluster_name", self.cluster_name.clone());
        put(&mut t, "client_addr", self.client_addr.clone());
        put(&mut t, "admin_addr", self.admin_addr.clone());
        put(&mut t, "data_dir", self.data_dir.as_ref().map(|p| p.to_string_lossy().into_owned()));
        put_int(&mut t, "cpu", self.cpu)?;
        put_int(&mut t, "numa_node", self.numa_node)?;
        put_int(&mut t, "tick_ms", self.tick_ms)?;
        put_int(&mut t, "heartbeat_ticks", self.heartbeat_ticks)?;
        put_int(&mut t, "election_ticks", self.election_ticks)?;
        put(&mut t, "pre_vote", self.pre_vote);
        put(&mut t, "check_quorum", self.check_quorum);
        put(&mut t, "read_mode", self.read_mode.clone());
        put_int(&mut t, "max_size_per_msg", self.max_size_per_msg)?;
        put_int(&mut t, "max_inflight_msgs", self.max_inflight_msgs)?;
        put_int(&mut t, "frame_bytes_max", self.frame_bytes_max)?;
        put_int(&mut t, "wal_segment_bytes", self.wal_segment_bytes)?;
        put_int(&mut t, "snapshot_log_bytes", self.snapshot_log_bytes)?;
        put_int(&mut t, "snapshot_catchup_entries", self.snapshot_catchup_entries)?;
        put_int(&mut t, "snapshot_catchup_bytes", self.snapshot_catchup_bytes)?;
        put_int(&mut t, "wal_writes_in_flight", self.wal_writes_in_flight)?;
        put(&mut t, "wal_sync", self.wal_sync.clone());
        put_int(&mut t, "max_clients", self.max_clients)?;
        put_int(&mut t, "max_pending_proposals", self.max_pending_proposals)?;
        put_int(&mut t, "max_pending_reads", self.max_pending_reads)?;
        put_int(&mut t, "request_timeout_ms", self.request_timeout_ms)?;
        put_int(&mut t, "fsync_warn_ms", self.fsync_warn_ms)?;
        put_int(&mut t, "apply_warn_ms", self.apply_warn_ms)?;
        put(&mut t, "bootstrap", self.bootstrap);
        put(&mut t, "join", self.join);
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every key of the configuration schema can be given as a flag.
    #[test]
    fn every_config_key_has_a_flag() {
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").expect("serve subcommand");
        let flags: Vec<String> = serve.get_arguments().filter_map(|a| a.get_long().map(str::to_string)).collect();
        for key in skiff_tuning::config::KEYS {
            let flag = key.replace('_', "-");
            assert!(flags.contains(&flag), "config key {key} has no --{flag}");
        }
    }

    #[test]
    fn flags_become_config_keys() {
        let cli = Cli::try_parse_from([
            "skiff",
            "serve",
            "--id",
            "2",
            "--cluster",
            "1=127.0.0.1:1,2=127.0.0.1:2",
            "--data-dir",
            "/d",
            "--tick-ms",
            "50",
            "--pre-vote",
            "false",
            "--bootstrap",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve") };
        let t = args.overrides().unwrap();
        let cfg = skiff_tuning::load(None, t).unwrap();
        assert_eq!((cfg.id, cfg.tick_ms, cfg.pre_vote, cfg.bootstrap), (2, 50, false, true));
        assert_eq!(cfg.data_dir, PathBuf::from("/d"));
    }

    /// `skiff local --help` says that a --data-dir it created is deleted on exit.
    #[test]
    fn local_help_says_a_created_data_dir_is_removed() {
        let mut cmd = Cli::command();
        let local = cmd.find_subcommand_mut("local").expect("local subcommand");
        let help = local.render_long_help().to_string();
        let data_dir = help.split("--data-dir").nth(1).expect("--data-dir documented");
        let data_dir = data_dir.split("--keep-data").next().unwrap();
        assert!(data_dir.contains("does not exist yet") && data_dir.contains("removed"), "{help}");
    }

    /// `bootstrap = true` in a file can be turned off from the command line.
    #[test]
    fn bootstrap_and_join_can_be_cleared_by_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("skiff.toml");
        std::fs::write(&file, "id = 1\ncluster = \"1=127.0.0.1:1\"\ndata_dir = \"/d\"\nbootstrap = true\n").unwrap();
        let load = |extra: &[&str]| {
            let mut argv = vec!["skiff", "serve", "--config", file.to_str().unwrap()];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else { panic!("serve") };
            skiff_tuning::load(args.config.as_deref(), args.overrides().unwrap()).unwrap()
        };
        assert!(load(&[]).bootstrap);
        assert!(!load(&["--bootstrap=false"]).bootstrap);
        assert!(load(&["--bootstrap"]).bootstrap);
        assert!(load(&["--bootstrap=true"]).bootstrap);
        let c = load(&["--bootstrap=false", "--join"]);
        assert!(!c.bootstrap && c.join);
        assert!(!load(&["--join=false"]).join);
        assert!(Cli::try_parse_from(["skiff", "serve", "--bootstrap=maybe"]).is_err());
    }
}
