//! What a shard publishes for the admin port and tests: its engine status, applied
//! state summary and counters, refreshed a few times per second off the hot path.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::shard::Counters;

/// Transport counters of one shard (totals over its peers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportCounters {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub connects: u64,
    pub dropped_queue_full: u64,
    pub dropped_too_large: u64,
    pub dropped_disconnected: u64,
    pub rejected: Vec<(&'static str, u64)>,
}

impl TransportCounters {
    pub fn from_stats(s: &skiff_net::Stats) -> TransportCounters {
        TransportCounters {
            frames_sent: s.frames_sent.get(),
            frames_received: s.frames_received.get(),
            connects: s.connects.get(),
            dropped_queue_full: s.dropped_queue_full.get(),
            dropped_too_large: s.dropped_too_large.get(),
            dropped_disconnected: s.dropped_disconnected.get(),
            rejected: s.rejections().map(|(r, n)| (r.name(), n)).collect(),
        }
    }
}

/// One shard's published state.
#[derive(Clone, Debug)]
pub struct ShardStatus {
    pub shard: u32,
    pub status: skiff_engine::Status,
    pub applied: u64,
    pub last_snapshot: u64,
    pub kv_keys: u64,
    /// Order-independent digest of the KV state, to compare replicas.
    pub kv_digest: u64,
    pub clients: usize,
    pub pending_writes: usize,
    pub pending_reads: usize,
    pub counters: Counters,
    pub transport: TransportCounters,
}

/// The latest status of every shard of this node, shared with the admin thread.
#[derive(Debug, Default)]
pub struct Published {
    shards: Mutex<BTreeMap<u32, ShardStatus>>,
}

impl Published {
    pub fn publish(&self, shard: u32, s: ShardStatus) {
        self.shards.lock().unwrap_or_else(|p| p.into_inner()).insert(shard, s);
    }

    pub fn get(&self) -> Vec<ShardStatus> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}
