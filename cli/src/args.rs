//! The `dtx` command line's arguments: every subcommand and its flags, as clap parses
//! them. What each command does is in `dispatch` and the modules it calls.

use crate::bench::Workload;
use crate::parse::{parse_bytes, parse_duration};
use crate::participant_check::DEFAULT_OPERATIONS;
use clap::{Parser, Subcommand};
use dtx_node::links::TransportKind;
use std::path::PathBuf;
use std::time::Duration;

/// What `dtx --help` opens with: what dtx is for its user and how to start.
pub const ABOUT: &str = "\
dtx: a decentralized transaction system. Atomic transactions over keys spread across
data nodes, with no coordinator to wait for (Paxos Commit).
Try it: `dtx demo`. Run a cluster: `dtx init --dir DIR`, then `dtx node` for each node.
Use it: `dtx put`, `get`, `delete`, `txn`, `status`, `bench` (the cluster config comes from
--config, else $DTX_CONFIG, else ./cluster.toml).
Services: `dtx participant check URL` tests a service's HTTP participant endpoints against
the contract (docs/participants.md).";

/// The `dtx` command line.
#[derive(Debug, Parser)]
#[command(name = "dtx", version, about = ABOUT)]
pub struct Cli {
    /// Act as this user of users.toml (client commands; default: $DTX_USER, else admin).
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `dtx wal ...`.
#[derive(Debug, Subcommand)]
pub enum WalAction {
    /// Check every checkpoint and segment of a data directory's log (read only): headers,
    /// batches, records, and the first problem of each file with its offset and whether it
    /// is a torn tail (cut at the next start) or corruption (the node refuses to start).
    /// Exit code 0 healthy, 1 corrupt.
    Verify {
        /// The data directory (or its `wal` directory).
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also print the bytes around this offset of FILE (a file name in the log).
        #[arg(long, value_names = ["FILE", "OFFSET"], num_args = 2)]
        hexdump: Option<Vec<String>>,
    },
}

/// `dtx user ...`.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user: a key NAME.key (0600) next to the config and an entry in users.toml.
    /// Running nodes pick it up at once.
    Add {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The user's name.
        name: String,
        /// A key prefix the user may read and write (repeat; "" allows every key).
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// A key prefix the user may only read (repeat).
        #[arg(long = "read")]
        read: Vec<String>,
    },
    /// Remove a user: running nodes end its sessions at once.
    Remove {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The user's name.
        name: String,
    },
    /// List the users and their permissions.
    List {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `dtx participant ...`.
#[derive(Debug, Subcommand)]
pub enum ParticipantAction {
    /// Check a service's HTTP participant endpoints against the contract
    /// (docs/participants.md) with fresh transaction ids: prepare and its repeat, the
    /// prepared list, commit, rollback and their repeats, rollback before prepare, prepare
    /// after rollback and after commit, and with --restart-command a restart between
    /// prepare and commit. It commits and rolls back real transactions: use a test
    /// instance. Exit code 0 all pass, 1 a check failed, 2 usage error or unreachable.
    Check {
        /// The service, e.g. http://127.0.0.1:8101.
        url: String,
        /// The operations to prepare: a JSON array in the contract's shape that the
        /// service accepts.
        #[arg(long, default_value = DEFAULT_OPERATIONS)]
        operations: String,
        /// A shell command (run with `sh -c`) that restarts the service, e.g. kills it and
        /// starts it again in the background; enables the restart checks.
        #[arg(long)]
        restart_command: Option<String>,
        /// Timeout of each call to the service.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
        /// How long the restart command and the service's return may take.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        restart_wait: Duration,
    },
}

/// The subcommands.
// `node` has many options; the command is parsed once per process, so its size is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write node keys and a cluster.toml for a local cluster on 127.0.0.1.
    Init {
        /// Number of data nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Directory to write into.
        #[arg(long)]
        dir: PathBuf,
        /// Failures tolerated per transaction (2F+1 acceptors).
        #[arg(long, default_value_t = 1)]
        f: u32,
        /// Node names, comma-separated (default n1..nN).
        #[arg(long, value_delimiter = ',')]
        names: Option<Vec<String>>,
    },
    /// Run a data node.
    Node {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// This node's name in the config.
        #[arg(long)]
        name: String,
        /// Directory for the write-ahead log.
        #[arg(long)]
        data_dir: PathBuf,
        /// Do not fsync the log (experiments only: acknowledged data can be lost).
        #[arg(long)]
        no_fsync: bool,
        /// Checkpoint the log after this many appended bytes.
        #[arg(long)]
        checkpoint_bytes: Option<u64>,
        /// How to send frames to peers (the node accepts both).
        #[arg(long, value_enum, default_value_t = TransportKind::Stream)]
        transport: TransportKind,
        /// Serve /metrics (Prometheus), /status and /drain here (loopback only; default:
        /// the node's `control` address in the config, if any).
        #[arg(long)]
        metrics: Option<String>,
        /// Discover peers on the LAN with mDNS (only in builds with the `mdns` feature).
        #[arg(long)]
        mdns: bool,
        /// Failure detector: time between heartbeats (e.g. 100ms).
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        heartbeat_interval: Duration,
        /// Failure detector: suspect a member once phi exceeds this.
        #[arg(long, default_value_t = 8.0)]
        phi_threshold: f64,
        /// Run without the failure detector (recovery then waits for timeouts).
        #[arg(long)]
        no_detector: bool,
        /// How long an RM waits for a decision before it leads recovery (default 200ms).
        #[arg(long, value_parser = parse_duration)]
        decision_timeout: Option<Duration>,
        /// How long a transaction waits for the votes of service nodes (a service's
        /// prepare may wait for its own locks) before it is recovered and so aborted,
        /// unless one is suspected (default 15s).
        #[arg(long, value_parser = parse_duration)]
        service_vote_timeout: Option<Duration>,
        /// Listen here instead of at the config's address (e.g. /ip4/127.0.0.1/tcp/0 if
        /// the configured port is taken): the others learn it from this node's
        /// heartbeats.
        #[arg(long)]
        listen: Option<libp2p::Multiaddr>,
        /// Serve every peer as a client with every permission, without users.toml
        /// (experiments only: anyone who can reach the port can write anything).
        #[arg(long)]
        insecure: bool,
        /// Messages per second one client may send this node (a token bucket).
        #[arg(long, default_value_t = 20_000)]
        client_rate: u32,
        /// Messages one client may send at once after a quiet spell.
        #[arg(long, default_value_t = 40_000)]
        client_burst: u32,
        /// First start of this node with this data directory (it must be empty or
        /// missing; `dtx init` prepares the default ones, so this is for others).
        #[arg(long, conflicts_with = "reinit")]
        new: bool,
        /// Start afresh after this node's data was lost (a wiped, damaged or replaced data
        /// directory): what is there is moved aside, the node's committed rows are gone,
        /// and it takes no acceptor duty until the other data nodes confirm that no
        /// transaction it may have voted on is still open.
        #[arg(long)]
        reinit: bool,
        /// Most bytes of committed rows this node may hold (e.g. 10GiB, 512MiB; default: no
        /// quota). Past it, writes that would grow the data abort with StorageFull; reads,
        /// deletes and commits of prepared transactions still work.
        #[arg(long, value_parser = parse_bytes)]
        storage_quota: Option<u64>,
        /// Take fault plans on the control endpoint (POST /faults, docs/faults.md): whoever
        /// holds the control token can then drop, delay and duplicate this node's
        /// messages. For experiments (`dtx lab`, tests) only, never in production.
        #[arg(long)]
        fault_injection: bool,
        /// Switch a deliberate protocol bug on (e.g. rm-commits-on-own-vote), to show that
        /// the lab's checks catch it. Only in a `dtx` built with `--features bugs`;
        /// repeatable.
        #[arg(long = "bug", value_name = "NAME")]
        bugs: Vec<String>,
        /// Make this node the resource manager of a service instead of the built-in
        /// key-value store: an HTTP participant (docs/participants.md) at
        /// http://127.0.0.1:8400, or a PostgreSQL database at
        /// postgres://USER@HOST:PORT/DATABASE driven through its prepared transactions
        /// (with --actions). Declare the node `role = "service"` in cluster.toml so that
        /// it owns only the keys and call targets NAME/...
        #[arg(long, conflicts_with = "storage_quota")]
        participant: Option<String>,
        /// Timeout of one call to an HTTP --participant (e.g. 5s).
        #[arg(long, value_parser = parse_duration, requires = "participant")]
        participant_timeout: Option<Duration>,
        /// The actions a PostgreSQL --participant runs (TOML: each action's SQL with
        /// named parameters, the rows it must change; docs/postgres.md).
        #[arg(long, requires = "participant")]
        actions: Option<PathBuf>,
    },
    /// Inspect a node's write-ahead log without changing it.
    Wal {
        /// What to do.
        #[command(subcommand)]
        action: WalAction,
    },
    /// Manage the users that may use the cluster (users.toml).
    User {
        /// What to do.
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print the cluster as one node sees it: members, roles, phi, suspicion, in-doubt
    /// transactions and their age.
    Status {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The node to ask (default: the first that answers).
        #[arg(long)]
        name: Option<String>,
        /// Print the JSON report instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Append a service or acceptor-only node to cluster.toml (key, ports, next id), to
    /// join the running cluster: start it with `dtx node`; running nodes re-read the file.
    AddNode {
        /// The cluster config to append to (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The new node's name (a service node owns every key `NAME/...`).
        #[arg(long)]
        name: String,
        /// `service` or `acceptor` (both own only their own namespace).
        #[arg(long, default_value = "service")]
        role: String,
    },
    /// Ask node NAME to stop taking new transactions, finish its open ones and exit.
    Drain {
        /// The node to drain.
        name: String,
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Return once the node has started draining, without waiting for it to exit.
        #[arg(long)]
        no_wait: bool,
    },
    /// Write one key (a one-key transaction).
    Put {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Read one key (a one-shot read transaction).
    Get {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The key.
        key: String,
    },
    /// Delete one key.
    Delete {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The key.
        key: String,
    },
    /// Run one transaction: 'write KEY VALUE', 'update KEY VALUE', 'delete KEY', 'read KEY',
    /// 'read-for-update KEY' (a read under an exclusive lock),
    /// 'call TARGET ACTION JSON' (a service's action, e.g. 'call flights/LH400 reserve {}').
    Txn {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The operations, in order.
        #[arg(required = true)]
        operations: Vec<String>,
    },
    /// Closed-loop load; the last line is a JSON summary with --json.
    Bench {
        /// The cluster config (default: $DTX_CONFIG, else ./cluster.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Concurrent closed-loop workers.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// How long to run (e.g. 20s, 500ms, 2m).
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// The workload.
        #[arg(long, value_enum, default_value_t = Workload::Bank)]
        workload: Workload,
        /// Print a JSON summary as the last line.
        #[arg(long)]
        json: bool,
        /// Write a Jepsen/Elle JSON-lines history (register workload).
        #[arg(long)]
        history: Option<PathBuf>,
        /// Accounts (bank) or keys (register).
        #[arg(long)]
        keys: Option<usize>,
        /// Skip loading initial data.
        #[arg(long)]
        no_setup: bool,
        /// How the client sends frames.
        #[arg(long, value_enum, default_value_t = TransportKind::Stream)]
        transport: TransportKind,
        /// Bank: read the balances under shared locks, upgraded at commit (two transfers
        /// of one account then both abort), instead of for update (exclusive locks at the
        /// read; a second transfer waits). For comparison.
        #[arg(long)]
        shared_reads: bool,
    },
    /// Throughput, p50 latency and CPU per transaction against clients, as one SVG, from
    /// the results file of `node/scripts/bench-3-nodes.sh` (`RESULTS=file.jsonl`; the
    /// script's `PLOT=file.svg` runs this).
    BenchPlot {
        /// The results file (JSON lines).
        results: PathBuf,
        /// Where to write the SVG.
        #[arg(long, default_value = "bench.svg")]
        out: PathBuf,
    },
    /// Services as participants: `dtx participant check URL`.
    Participant {
        /// What to do.
        #[command(subcommand)]
        action: ParticipantAction,
    },
    /// Partition experiments against real processes: `dtx lab run SCENARIO`.
    Lab {
        /// What to do.
        #[command(subcommand)]
        action: LabAction,
    },
    /// A 5-node local cluster, orders and transfers, a node killed and restarted, audits.
    Demo {
        /// How long the workload runs.
        #[arg(long, default_value = "12s", value_parser = parse_duration)]
        duration: Duration,
        /// Closed-loop workers per workload.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Keep the cluster directory (logs, keys) afterwards.
        #[arg(long)]
        keep: bool,
    },
}

/// `dtx lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Runs a scenario (TOML: cluster, workload, nemesis schedule; see lab/scenarios/)
    /// against a fresh local cluster of real `dtx node` processes; writes the history, the
    /// nemesis log, node logs, metric samples and report.html; exit code 1 on a violation.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Seed of the schedule's random choices and of the workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory (default lab-out/<scenario>-<seed>; replaced if it exists).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Kernel-level partitions (root only, iproute2): each node in its own network
        /// namespace on a bridge the lab creates and deletes; two-way cuts as blackhole
        /// routes, loss/delay/duplication as tc netem (docs/lab.md).
        #[arg(long)]
        netns: bool,
    },
}
