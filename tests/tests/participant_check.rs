//! `dtx participant check` against real services: the Python travel provider
//! (examples/travel/provider.py) passes every check, kill -9 and restart included; each of
//! its deliberately broken modes fails the check that names the broken rule; a closed port
//! is a usage-level failure (exit 2). Python 3 is required: without it these tests fail
//! with a message saying so (they never skip).

mod common;

use common::executable;
use dtx_cli::local::temporary_dir;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The reservation every check prepares.
const OPERATIONS: &str = r#"[{"kind":"call","target":"flights/LH400","action":"reserve","args":{"item":"LH400","trip":"conformance"}}]"#;

/// How long one `dtx participant check` run may take.
const CHECK_PATIENCE: Duration = Duration::from_secs(120);

/// How long the provider may take to print its address.
const START_PATIENCE: Duration = Duration::from_secs(20);

fn provider_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/travel/provider.py")
}

/// Fails the test (never skips it) if `python3` cannot run.
fn require_python() {
    let version = Command::new("python3").arg("--version").output();
    match version {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "python3 is required by the participant check tests (the travel provider is \
             Python) but `python3 --version` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!(
            "python3 is required by the participant check tests (the travel provider is \
             Python), and it cannot be run: {error}; install Python 3"
        ),
    }
}

/// A running provider.py and its directory; killed (with whatever a restart command
/// started in its place) when dropped.
struct Provider {
    dir: PathBuf,
    child: Child,
    url: String,
    port: u16,
    arguments: Vec<String>,
}

impl Provider {
    fn start(test: &str, broken: Option<&str>) -> Provider {
        require_python();
        let dir = temporary_dir(&format!("dtx-test-participant-{test}"));
        fs::create_dir_all(&dir).expect("provider directory");
        let mut arguments = vec![
            "--kind".to_string(),
            "flights".to_string(),
            "--state".to_string(),
            dir.join("flights.json").display().to_string(),
            "--inventory".to_string(),
            "LH400=100".to_string(),
        ];
        if let Some(mode) = broken {
            arguments.extend(["--break".to_string(), mode.to_string()]);
        }
        let mut child = Command::new("python3")
            .arg(provider_script())
            .args(&arguments)
            .args(["--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start provider.py");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(START_PATIENCE)
            .expect("provider.py printed no address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line of provider.py: {line:?}"))
            .to_string();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("port");
        Provider {
            dir,
            child,
            url,
            port,
            arguments,
        }
    }

    /// A shell command that kills this provider with SIGKILL and starts it again on the
    /// same port and state file, in the background (its pid in `restarted.pid`).
    fn restart_command(&self) -> String {
        let arguments: Vec<String> = self
            .arguments
            .iter()
            .map(|argument| format!("'{argument}'"))
            .collect();
        format!(
            "kill -9 {pid}; python3 '{script}' {arguments} --port {port} \
             > '{dir}/restarted.log' 2>&1 & echo $! > '{dir}/restarted.pid'",
            pid = self.child.id(),
            script = provider_script().display(),
            arguments = arguments.join(" "),
            port = self.port,
            dir = self.dir.display(),
        )
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pid) = fs::read_to_string(self.dir.join("restarted.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// What one `dtx participant check` run printed and how it ended.
struct CheckRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl CheckRun {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn shows(&self, line_start: &str) -> bool {
        self.stdout.lines().any(|line| line.starts_with(line_start))
    }

    fn failures(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|line| line.starts_with("FAIL "))
            .collect()
    }
}

impl std::fmt::Display for CheckRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `dtx participant check ARGS...`, its output in files of `dir` (a service its
/// restart command starts must not hold a pipe of ours open).
fn run_check(dir: &Path, arguments: &[&str]) -> CheckRun {
    fs::create_dir_all(dir).expect("dir");
    let stdout_path = dir.join("check.out");
    let stderr_path = dir.join("check.err");
    let mut child = Command::new(executable())
        .args(["participant", "check"])
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start dtx participant check");
    let deadline = Instant::now() + CHECK_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "dtx participant check ran longer than {CHECK_PATIENCE:?}: {}",
                fs::read_to_string(&stdout_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    CheckRun {
        status,
        stdout: fs::read_to_string(&stdout_path).expect("stdout"),
        stderr: fs::read_to_string(&stderr_path).expect("stderr"),
    }
}

/// The ids provider.py lists as prepared, asked through the node's own HTTP participant.
fn listed_prepared(url: &str) -> Vec<dtx_protocol::TxnId> {
    use dtx_node::participant::http::{HttpOptions, HttpParticipant};
    let participant = HttpParticipant::new(url, HttpOptions::default()).expect("url");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(participant.list_prepared())
        .expect("prepared list")
}

#[test]
fn a_conforming_provider_passes_every_check_including_a_kill_9_restart() {
    let provider = Provider::start("conforming", None);
    let restart = provider.restart_command();
    let run = run_check(
        &provider.dir,
        &[
            &provider.url,
            "--operations",
            OPERATIONS,
            "--restart-command",
            &restart,
        ],
    );
    assert_eq!(run.code(), Some(0), "{run}");
    assert!(run.failures().is_empty(), "{run}");
    for check in [
        "PASS prepare",
        "PASS prepare-repeated",
        "PASS commit-repeated",
        "PASS prepare-after-commit",
        "PASS prepare-after-rollback",
        "PASS prepare-after-unknown-rollback",
        "PASS service-answers-after-restart",
        "PASS prepared-survives-restart",
        "PASS commit-after-restart",
        "PASS rollback-remembered-across-restart",
    ] {
        assert!(run.shows(check), "{check} missing: {run}");
    }
    // The restart really happened: a new process answers, and the run left nothing held.
    let restarted = fs::read_to_string(provider.dir.join("restarted.pid")).expect("pid file");
    assert_ne!(restarted.trim(), provider.child.id().to_string());
    assert_eq!(listed_prepared(&provider.url), vec![], "{run}");
}

#[test]
fn forget_rollback_fails_the_reordering_check() {
    let provider = Provider::start("forget-rollback", Some("forget-rollback"));
    let run = run_check(&provider.dir, &[&provider.url, "--operations", OPERATIONS]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(run.shows("FAIL prepare-after-unknown-rollback"), "{run}");
    // A rollback of a known transaction is still remembered: only the broken rule fails.
    assert!(run.shows("PASS prepare-after-rollback"), "{run}");
    assert_eq!(run.failures().len(), 1, "{run}");
}

#[test]
fn not_durable_fails_the_restart_checks() {
    let provider = Provider::start("not-durable", Some("not-durable"));
    let without_restart = run_check(&provider.dir, &[&provider.url, "--operations", OPERATIONS]);
    assert_eq!(without_restart.code(), Some(0), "{without_restart}");
    assert!(
        without_restart.shows("SKIP restart checks"),
        "{without_restart}"
    );
    let restart = provider.restart_command();
    let run = run_check(
        &provider.dir,
        &[
            &provider.url,
            "--operations",
            OPERATIONS,
            "--restart-command",
            &restart,
        ],
    );
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(run.shows("PASS service-answers-after-restart"), "{run}");
    assert!(run.shows("FAIL prepared-survives-restart"), "{run}");
    assert!(run.shows("FAIL commit-after-restart"), "{run}");
}

#[test]
fn double_prepare_fails_the_repeated_prepare_check() {
    let provider = Provider::start("double-prepare", Some("double-prepare"));
    let run = run_check(&provider.dir, &[&provider.url, "--operations", OPERATIONS]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(run.shows("FAIL prepare-repeated"), "{run}");
    assert!(run.stdout.contains("listed 2 time(s)"), "{run}");
}

#[test]
fn a_closed_port_or_a_bad_url_exits_2_with_a_clear_message() {
    let dir = temporary_dir("dtx-test-participant-closed");
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let run = run_check(&dir, &[&url]);
    assert_eq!(run.code(), Some(2), "{run}");
    assert!(
        run.stderr.contains("cannot reach the service at") && run.stderr.contains(&url),
        "{run}"
    );
    assert!(!run.shows("PASS"), "{run}");
    let run = run_check(&dir, &["https://127.0.0.1:1"]);
    assert_eq!(run.code(), Some(2), "{run}");
    assert!(run.stderr.contains("must start with http://"), "{run}");
    let run = run_check(&dir, &[&url, "--operations", "[{\"kind\":\"fly\"}]"]);
    assert_eq!(run.code(), Some(2), "{run}");
    assert!(run.stderr.contains("--operations"), "{run}");
    let _ = fs::remove_dir_all(&dir);
}
