//! How the log behaves: [`WalOptions`].

use std::path::PathBuf;

/// How the log behaves.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// The log directory (created if missing).
    pub dir: PathBuf,
    /// The cluster this log belongs to, written into every file header and checked at
    /// open (at most [`super::format::CLUSTER_ID_BYTES_MAX`] bytes).
    pub cluster_id: String,
    /// The node this log belongs to, written into every file header and checked at open.
    pub node_id: u64,
    /// A segment past this size is sealed and a new one started.
    pub segment_bytes_max: u64,
    /// Record bytes appended since the last checkpoint (padding and headers not counted)
    /// that trigger the next one.
    pub checkpoint_after_bytes: u64,
    /// Outcomes a checkpoint keeps: must equal the node's `Limits::outcomes_kept_max`
    /// (see [`super::compact::compact`]).
    pub outcomes_window: usize,
    /// Call `sync_data` (off only for experiments: acknowledged data could be lost).
    pub fsync: bool,
    /// Test hook (cargo feature `test-hooks` only): at this group commit (1-based), write all but the batch's last 3 bytes,
    /// cut the file there and abort the process before the fsync: a batch that grew the
    /// file and lost its end in a crash, a provable torn tail.
    #[cfg(feature = "test-hooks")]
    pub crash_at_group_commit: Option<u64>,
}

impl WalOptions {
    /// Defaults for the log in `dir` of node `node_id` in cluster `cluster_id`.
    pub fn new(dir: impl Into<PathBuf>, cluster_id: impl Into<String>, node_id: u64) -> WalOptions {
        WalOptions {
            dir: dir.into(),
            cluster_id: cluster_id.into(),
            node_id,
            segment_bytes_max: 64 * 1024 * 1024,
            checkpoint_after_bytes: 256 * 1024 * 1024,
            outcomes_window: 1_000_000,
            fsync: true,
            #[cfg(feature = "test-hooks")]
            crash_at_group_commit: None,
        }
    }
}
