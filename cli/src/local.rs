//! A local cluster of real `dtx node` processes on 127.0.0.1, for `dtx demo`, the lab and
//! the black-box tests: init, start, SIGKILL, restart, stop, and fault plans for nodes
//! started with `--fault-injection`.

use dtx_node::config::{init, ClusterConfig, ConfigError, InitError};
use dtx_node::control::{self, ControlError};
use dtx_node::faults::{FaultPlan, FaultRule, PeerSelector};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting node may take to print its ready line.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a local cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// `dtx init` failed.
    #[error(transparent)]
    Init(#[from] InitError),
    /// The written config does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A process could not be started or signalled.
    #[error("node {name}: {message}")]
    Process {
        /// The node.
        name: String,
        /// What failed.
        message: String,
    },
    /// No such node.
    #[error("no node named {0:?}")]
    UnknownNode(String),
    /// The node has no control endpoint in `cluster.toml` (fault plans go through it).
    #[error("node {0} has no control endpoint in cluster.toml")]
    NoControl(String),
    /// A control request (a fault plan) failed or was refused.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Running `dtx node` children of one cluster directory.
#[derive(Debug)]
pub struct LocalCluster {
    /// The cluster directory (keys, `cluster.toml`, data directories).
    pub dir: PathBuf,
    /// Path of `cluster.toml`.
    pub config_path: PathBuf,
    /// The parsed config.
    pub config: ClusterConfig,
    executable: PathBuf,
    children: BTreeMap<String, Child>,
    extra_env: BTreeMap<String, Vec<(String, String)>>,
    extra_args: BTreeMap<String, Vec<String>>,
    programs: BTreeMap<String, PathBuf>,
    namespaces: BTreeMap<String, String>,
    remove_on_drop: bool,
    fault_injection: bool,
}

impl LocalCluster {
    /// Writes a cluster of `names` (F = `f`) into `dir`; starts nothing yet.
    /// `executable` is a `dtx` binary (the demo passes its own).
    pub fn create(
        executable: PathBuf,
        dir: PathBuf,
        names: Vec<String>,
        f: u32,
    ) -> Result<LocalCluster, LocalClusterError> {
        let config_path = init(&dir, names.len(), Some(names), f)?;
        let config = ClusterConfig::load(&config_path)?;
        Ok(LocalCluster {
            dir,
            config_path,
            config,
            executable,
            children: BTreeMap::new(),
            extra_env: BTreeMap::new(),
            extra_args: BTreeMap::new(),
            programs: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            remove_on_drop: false,
            fault_injection: false,
        })
    }

    /// Re-reads `cluster.toml` (after `dtx add-node` appended to it).
    pub fn reload(&mut self) -> Result<(), LocalClusterError> {
        self.config = ClusterConfig::load(&self.config_path)?;
        Ok(())
    }

    /// Removes the cluster directory when this value is dropped.
    pub fn remove_on_drop(&mut self, remove: bool) {
        self.remove_on_drop = remove;
    }

    /// Sets an environment variable for the next starts of node `name`.
    pub fn set_env(&mut self, name: &str, key: &str, value: &str) {
        let entries = self.extra_env.entry(name.to_string()).or_default();
        entries.retain(|(existing, _)| existing != key);
        entries.push((key.to_string(), value.to_string()));
    }

    /// Sets extra `dtx node` arguments for the next starts of node `name`.
    pub fn set_args(&mut self, name: &str, args: &[&str]) {
        let args = args.iter().map(|arg| arg.to_string()).collect();
        self.extra_args.insert(name.to_string(), args);
    }

    /// Clears the extra environment of node `name`.
    pub fn clear_env(&mut self, name: &str) {
        self.extra_env.remove(name);
    }

    /// The data directory of node `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts the nodes (from their next start on) with `--fault-injection`, so that
    /// [`LocalCluster::set_faults`] and [`LocalCluster::partition`] work on them (default
    /// off). Nodes run with [`LocalCluster::set_program`] are left alone.
    pub fn set_fault_injection(&mut self, enabled: bool) {
        self.fault_injection = enabled;
    }

    /// Starts every node and waits until each is ready.
    pub fn start_all(&mut self) -> Result<(), LocalClusterError> {
        let names: Vec<String> = self
            .config
            .nodes
            .iter()
            .map(|node| node.name.clone())
            .collect();
        for name in &names {
            self.spawn(name)?;
        }
        for name in &names {
            self.wait_ready(name)?;
        }
        Ok(())
    }

    /// Starts node `name` and waits until it is ready; returns its ready line (which
    /// tells how many records it recovered and how many transactions are in doubt).
    pub fn start(&mut self, name: &str) -> Result<String, LocalClusterError> {
        self.spawn(name)?;
        self.wait_ready(name)
    }

    fn spawn(&mut self, name: &str) -> Result<(), LocalClusterError> {
        if self.config.node_named(name).is_none() {
            return Err(LocalClusterError::UnknownNode(name.to_string()));
        }
        let log_path = self.dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| self.process_error(name, &error))?;
        let mut command = self.node_command(name, &self.data_dir(name));
        command.stdout(Stdio::piped()).stderr(log);
        if self.fault_injection && !self.programs.contains_key(name) {
            command.arg("--fault-injection");
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn,dtx::audit=info");
        }
        for (key, value) in self.extra_env.get(name).into_iter().flatten() {
            command.env(key, value);
        }
        command.args(self.extra_args.get(name).into_iter().flatten());
        let child = command
            .spawn()
            .map_err(|error| self.process_error(name, &error))?;
        self.children.insert(name.to_string(), child);
        Ok(())
    }

    /// `dtx node` for member `name` of this cluster on `data_dir`, stdin closed.
    /// Runs node `name` as `program --config .. --name .. --data-dir ..` instead of
    /// `dtx node ...`: a program that hosts a data node itself (a service embedding its
    /// participant), started, killed and restarted like any node.
    pub fn set_program(&mut self, name: &str, program: PathBuf) {
        self.programs.insert(name.to_string(), program);
    }

    /// Runs node `name` (from its next start on) inside the network namespace `namespace`:
    /// `ip netns exec NAMESPACE dtx node ...`. `ip netns exec` execs the node, so
    /// [`LocalCluster::pid`] is the node's own process and signals reach it.
    pub fn set_netns(&mut self, name: &str, namespace: &str) {
        self.namespaces
            .insert(name.to_string(), namespace.to_string());
    }

    /// Moves node `name` onto `ip` in `cluster.toml` (listen address and control endpoint,
    /// same ports) and re-reads the file: for a node in its own network namespace.
    pub fn set_node_ip(
        &mut self,
        name: &str,
        ip: std::net::Ipv4Addr,
    ) -> Result<(), LocalClusterError> {
        dtx_node::config::set_node_ip(&self.config_path, name, ip)?;
        self.reload()
    }

    fn node_command(&self, name: &str, data_dir: &Path) -> Command {
        let program = self.programs.get(name).unwrap_or(&self.executable);
        let mut command = match self.namespaces.get(name) {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(program);
                command
            }
            None => Command::new(program),
        };
        if !self.programs.contains_key(name) {
            command.arg("node");
        }
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null());
        command
    }

    fn wait_ready(&mut self, name: &str) -> Result<String, LocalClusterError> {
        let error = |message: String| LocalClusterError::Process {
            name: name.to_string(),
            message,
        };
        let child = self
            .children
            .get_mut(name)
            .ok_or_else(|| error("not started".to_string()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| error("no stdout".to_string()))?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut signalled = false;
            // Keep reading so the child never blocks on a full pipe.
            while let Some(Ok(line)) = lines.next() {
                if !signalled && line.contains(" ready:") {
                    signalled = true;
                    let _ = sender.send(line);
                }
            }
        });
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            if let Ok(line) = receiver.recv_timeout(Duration::from_millis(50)) {
                return Ok(line);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(error(format!(
                    "exited during start ({status}); see {}",
                    self.dir.join(format!("{name}.log")).display()
                )));
            }
            if Instant::now() > deadline {
                return Err(error("did not become ready in time".to_string()));
            }
        }
    }

    /// Kills node `name` with SIGKILL (no shutdown, no flush) and reaps it.
    pub fn kill(&mut self, name: &str) -> Result<(), LocalClusterError> {
        let mut child = self
            .children
            .remove(name)
            .ok_or_else(|| LocalClusterError::UnknownNode(name.to_string()))?;
        // std's kill sends SIGKILL on Unix.
        child
            .kill()
            .map_err(|error| self.process_error(name, &error))?;
        let _ = child.wait();
        Ok(())
    }

    /// The process id of node `name`, if it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children.get(name).map(Child::id)
    }

    /// Runs `dtx node` for `name` once more, beside the cluster's own process (a second
    /// copy, as an unlucky operator might), with `data_dir` and `extra` arguments, and
    /// waits up to `timeout` for it to exit. Returns its exit status (`None`: still
    /// running at the timeout, then killed) and its stderr.
    pub fn run_copy(
        &self,
        name: &str,
        data_dir: &Path,
        extra: &[&str],
        timeout: Duration,
    ) -> Result<(Option<std::process::ExitStatus>, String), LocalClusterError> {
        let stderr_path = self.dir.join(format!("{name}.copy.stderr"));
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|error| self.process_error(name, &error))?;
        let mut child = self
            .node_command(name, data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|error| self.process_error(name, &error))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        Ok((status, text))
    }

    /// True if node `name`'s process is running.
    pub fn is_running(&mut self, name: &str) -> bool {
        match self.children.get_mut(name) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for node `name`'s process to exit by itself; returns whether
    /// it did (the crash-injection hooks abort the process).
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running(name) {
                self.children.remove(name);
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Waits up to `timeout` for node `name`'s process to exit by itself and returns its
    /// exit status (`None`: still running, or not started here).
    pub fn wait_exit_status(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.children.get_mut(name)?;
            if let Ok(Some(status)) = child.try_wait() {
                self.children.remove(name);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The control endpoint (`/status`, `/metrics`, `/drain`) of node `name`.
    pub fn control_address(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.config.node_named(name).and_then(|node| node.control)
    }

    /// Puts `plan` in force on node `name` (started with `--fault-injection`, see
    /// [`LocalCluster::set_fault_injection`]) through its control endpoint, with the
    /// cluster's control token (the file `dtx init` wrote next to `cluster.toml`). The
    /// plan lives in the node's memory: a restarted node starts healed.
    pub async fn set_faults(&self, name: &str, plan: &FaultPlan) -> Result<(), LocalClusterError> {
        let address = self
            .control_address(name)
            .ok_or_else(|| LocalClusterError::NoControl(name.to_string()))?;
        let token = control::read_token_file(&self.config.control_token_path())?;
        control::set_faults(address, &token, plan).await?;
        Ok(())
    }

    /// Partitions node `name` from `blocked` (node names, `clients` for every peer that is
    /// not a data node, `*` for every peer): it drops all their messages in both
    /// directions. An empty `blocked` heals it. One side only: partition the others from
    /// `name` too for a partition both sides see.
    pub async fn partition(&self, name: &str, blocked: &[&str]) -> Result<(), LocalClusterError> {
        let rules = blocked
            .iter()
            .map(|peer| FaultRule::partition(PeerSelector::parse(peer)))
            .collect();
        self.set_faults(name, &FaultPlan::new(rules, 0)).await
    }

    /// Stops every node (SIGKILL: nodes keep nothing in memory that the log lacks).
    pub fn stop_all(&mut self) {
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in names {
            let _ = self.kill(&name);
        }
    }

    fn process_error(&self, name: &str, error: &dyn std::fmt::Display) -> LocalClusterError {
        LocalClusterError::Process {
            name: name.to_string(),
            message: error.to_string(),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fresh directory under the system's temporary directory.
pub fn temporary_dir(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()))
}

/// True if `path` looks like a cluster directory written by `dtx init`.
pub fn is_cluster_dir(path: &Path) -> bool {
    path.join("cluster.toml").exists()
}
