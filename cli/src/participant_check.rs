//! `dtx participant check URL`: a conformance tester of the HTTP participant contract
//! (`docs/participants.md`) that a service author runs against their own endpoints.
//!
//! It speaks through [`HttpParticipant`] (one implementation of the wire shapes, the one a
//! data node uses), with fresh transaction ids per run, and checks what the node relies
//! on: prepare and its repeat, the prepared list, commit and rollback and their repeats,
//! rollback before prepare (the reordering case), prepare after rollback and after commit,
//! and, with `--restart-command`, that a prepared transaction survives a restart of the
//! service. Each check prints `PASS name` or `FAIL name: expected ..., got ...`.
//!
//! It commits and rolls back real transactions: run it against a test instance. It leaves
//! nothing prepared (what it prepared and did not finish is rolled back at the end).
//!
//! Exit code: 0 if every check passes, 1 on any failure, 2 on a usage error or a service
//! that cannot be reached at all.

use dtx_node::participant::http::{
    operation_from_json, CallError, CallProblem, HttpOptions, HttpParticipant,
};
use dtx_node::participant::PrepareAnswer;
use dtx_protocol::{NodeId, Operation, Outcome, TxnId};
use std::collections::BTreeSet;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The operations prepared when `--operations` is not given.
pub const DEFAULT_OPERATIONS: &str =
    r#"[{"kind":"call","target":"check/item","action":"check","args":{}}]"#;

/// How often the service is asked whether it answers again after a restart.
const RESTART_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What `dtx participant check` was asked to do.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The service's URL.
    pub url: String,
    /// The operations to prepare, a JSON array in the contract's shape.
    pub operations: String,
    /// A shell command that restarts the service (run with `sh -c`).
    pub restart_command: Option<String>,
    /// Timeout of each call.
    pub call_timeout: Duration,
    /// How long the restart command and the service's return may take together.
    pub restart_wait: Duration,
}

/// Runs the checks; prints each result and a summary; returns the exit code.
pub async fn run(options: CheckOptions) -> ExitCode {
    let usage_error = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    };
    let http_options = HttpOptions {
        call_timeout: options.call_timeout,
        // One attempt: the checker reports what the service answered, not what a retry hid.
        prepare_attempts_max: 1,
        ..HttpOptions::default()
    };
    let participant = match HttpParticipant::new(&options.url, http_options) {
        Ok(participant) => participant,
        Err(error) => return usage_error(error.to_string()),
    };
    let operations = match parse_operations(&options.operations) {
        Ok(operations) => operations,
        Err(message) => return usage_error(format!("--operations: {message}")),
    };
    let client = match fresh_client_id() {
        Ok(client) => client,
        Err(message) => return usage_error(message),
    };
    let mut checker = Checker {
        participant,
        operations,
        client,
        next_sequence: 1,
        unfinished: BTreeSet::new(),
        passed: 0,
        failed: 0,
    };
    if let Err(error) = checker.participant.list_prepared().await {
        if matches!(
            error.problem,
            CallProblem::Connect { .. } | CallProblem::TimedOut { .. }
        ) {
            return usage_error(format!(
                "cannot reach the service at {}: {error}",
                checker.participant.url()
            ));
        }
    }
    println!(
        "checking {} (transaction ids t{}.*)",
        checker.participant.url(),
        client.0
    );
    checker.run_all(&options).await;
    checker.clean_up().await;
    println!("{} passed, {} failed", checker.passed, checker.failed);
    if checker.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The operations of `--operations`: a non-empty JSON array of operations.
fn parse_operations(text: &str) -> Result<Vec<Operation>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let items = json
        .as_array()
        .filter(|items| !items.is_empty())
        .ok_or("expected a non-empty JSON array of operations")?;
    items
        .iter()
        .map(|item| operation_from_json(item).map_err(|error| error.to_string()))
        .collect()
}

/// A random client id, so that this run's transaction ids are new to the service.
fn fresh_client_id() -> Result<NodeId, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|error| format!("no randomness: {error}"))?;
    // Below 2^53, so that a service parsing ids as JSON-style doubles keeps them exact.
    Ok(NodeId(u64::from_le_bytes(bytes) >> 11))
}

/// The state of one run.
struct Checker {
    participant: HttpParticipant,
    operations: Vec<Operation>,
    client: NodeId,
    next_sequence: u64,
    /// Transactions this run prepared (or may have) and not yet finished: rolled back at
    /// the end, so that the run leaves nothing held.
    unfinished: BTreeSet<TxnId>,
    passed: usize,
    failed: usize,
}

/// A check's result: passed (with an optional note), or failed saying what was expected
/// and what came back.
type Verdict = Result<Option<String>, String>;

impl Checker {
    async fn run_all(&mut self, options: &CheckOptions) {
        let verdict = self.check_prepared_endpoint().await;
        self.record("prepared-endpoint", verdict);
        self.commit_scenario().await;
        self.rollback_scenario().await;
        self.unknown_rollback_scenario().await;
        match &options.restart_command {
            Some(command) => self.restart_scenario(command, options.restart_wait).await,
            None => println!("SKIP restart checks: no --restart-command given"),
        }
    }

    fn new_txn(&mut self) -> TxnId {
        let txn = TxnId {
            client: self.client,
            sequence: self.next_sequence,
        };
        self.next_sequence += 1;
        txn
    }

    fn record(&mut self, name: &str, verdict: Verdict) {
        match verdict {
            Ok(note) => {
                self.passed += 1;
                match note {
                    None => println!("PASS {name}"),
                    Some(note) => println!("PASS {name} ({note})"),
                }
            }
            Err(failure) => {
                self.failed += 1;
                println!("FAIL {name}: {failure}");
            }
        }
    }

    fn skip(&self, names: &[&str], why: &str) {
        for name in names {
            println!("SKIP {name}: {why}");
        }
    }

    /// Prepares `txn`; it is rolled back at the end unless it is finished or was refused
    /// (a refusal holds nothing; a timeout may have prepared it).
    async fn prepare(&mut self, txn: TxnId) -> Result<PrepareAnswer, CallError> {
        let newly_open = self.unfinished.insert(txn);
        let answer = self
            .participant
            .prepare_with_retries(txn, &self.operations)
            .await;
        if newly_open && matches!(answer, Ok(PrepareAnswer::Refused { .. })) {
            self.unfinished.remove(&txn);
        }
        answer
    }

    async fn finish(&mut self, txn: TxnId, outcome: Outcome) -> Result<(), CallError> {
        let result = self.participant.finish_once(txn, outcome).await;
        if result.is_ok() {
            self.unfinished.remove(&txn);
        }
        result
    }

    /// How many times the prepared list holds `txn`.
    async fn times_listed(&self, txn: TxnId) -> Result<usize, String> {
        let listed = self
            .participant
            .list_prepared()
            .await
            .map_err(|error| format!("the prepared list could not be read: {error}"))?;
        Ok(listed.iter().filter(|listed| **listed == txn).count())
    }

    async fn check_prepared_endpoint(&self) -> Verdict {
        match self.participant.list_prepared().await {
            Ok(_) => Ok(None),
            Err(error) => Err(format!(
                "expected 2xx {{\"prepared\": [ids]}} from GET /dtx/prepared, got {error}"
            )),
        }
    }

    /// Prepare, its repeat, the list, commit, its repeat, prepare after commit.
    async fn commit_scenario(&mut self) {
        let txn = self.new_txn();
        let answer = self.prepare(txn).await;
        let prepared = matches!(answer, Ok(PrepareAnswer::Prepared));
        self.record("prepare", expect_prepared(txn, &answer));
        if !prepared {
            let names = [
                "prepared-list",
                "prepare-repeated",
                "commit",
                "commit-repeated",
                "committed-not-listed",
                "prepare-after-commit",
            ];
            self.skip(&names, "prepare did not answer prepared");
            return;
        }
        let verdict = self.expect_listed(txn, 1, "after prepare").await;
        self.record("prepared-list", verdict);
        let verdict = self.check_repeated_prepare(txn).await;
        self.record("prepare-repeated", verdict);
        let verdict = expect_done(txn, "commit", &self.finish(txn, Outcome::Commit).await);
        self.record("commit", verdict);
        let verdict = expect_done(txn, "commit", &self.finish(txn, Outcome::Commit).await);
        self.record("commit-repeated", verdict);
        let verdict = self.expect_listed(txn, 0, "after commit").await;
        self.record("committed-not-listed", verdict);
        let verdict = self.check_prepare_after_commit(txn).await;
        self.record("prepare-after-commit", verdict);
    }

    async fn check_repeated_prepare(&mut self, txn: TxnId) -> Verdict {
        let answer = self.prepare(txn).await;
        expect_prepared(txn, &answer)
            .map_err(|failure| format!("a repeated prepare must answer the same: {failure}"))?;
        self.expect_listed(txn, 1, "after a repeated prepare (no second effect)")
            .await
    }

    /// The contract asks for a refusal; the same answer again without a new prepared entry
    /// is tolerated (nothing is held), and said.
    async fn check_prepare_after_commit(&mut self, txn: TxnId) -> Verdict {
        let answer = self.prepare(txn).await;
        let listed = self.times_listed(txn).await?;
        match answer {
            Ok(PrepareAnswer::Refused { .. }) if listed == 0 => Ok(Some("refused".to_string())),
            Ok(PrepareAnswer::Prepared) if listed == 0 => {
                self.unfinished.remove(&txn);
                Ok(Some(
                    "answered prepared again without a new prepared entry; the contract \
                     asks for a refusal (4xx)"
                        .to_string(),
                ))
            }
            other => Err(format!(
                "expected a refusal (4xx) of a prepare of committed {txn} and nothing \
                 prepared, got {} and {txn} listed {listed} time(s) in /dtx/prepared",
                describe(&other)
            )),
        }
    }

    /// Rollback of a prepared transaction, its repeat, prepare after rollback.
    async fn rollback_scenario(&mut self) {
        let txn = self.new_txn();
        let answer = self.prepare(txn).await;
        if !matches!(answer, Ok(PrepareAnswer::Prepared)) {
            let failure = format!(
                "expected a second transaction {txn} to prepare (2xx), got {}",
                describe(&answer)
            );
            self.record("rollback", Err(failure));
            let names = [
                "rolled-back-not-listed",
                "rollback-repeated",
                "prepare-after-rollback",
            ];
            self.skip(&names, "no prepared transaction to roll back");
            return;
        }
        let verdict = expect_done(txn, "rollback", &self.finish(txn, Outcome::Abort).await);
        self.record("rollback", verdict);
        let verdict = self.expect_listed(txn, 0, "after rollback").await;
        self.record("rolled-back-not-listed", verdict);
        let verdict = expect_done(txn, "rollback", &self.finish(txn, Outcome::Abort).await);
        self.record("rollback-repeated", verdict);
        let verdict = self
            .expect_refused(txn, "it was rolled back (a late prepare must hold nothing)")
            .await;
        self.record("prepare-after-rollback", verdict);
    }

    /// Rollback of an id never prepared, then its prepare: the reordering case.
    async fn unknown_rollback_scenario(&mut self) {
        let txn = self.new_txn();
        let verdict = expect_done(txn, "rollback", &self.finish(txn, Outcome::Abort).await);
        self.record("rollback-unknown", verdict);
        let verdict = self
            .expect_refused(
                txn,
                "its rollback arrived first (reordering: the rollback must be remembered, \
                 so a late prepare holds nothing)",
            )
            .await;
        self.record("prepare-after-unknown-rollback", verdict);
    }

    /// Prepare, restart the service, and see the prepared ones still there and finishable;
    /// a rollback of an unknown id from before the restart is still remembered.
    async fn restart_scenario(&mut self, command: &str, patience: Duration) {
        let to_commit = self.new_txn();
        let to_roll_back = self.new_txn();
        let forgotten = self.new_txn();
        let names_after = [
            "service-answers-after-restart",
            "prepared-survives-restart",
            "commit-after-restart",
            "rollback-after-restart",
            "rollback-remembered-across-restart",
        ];
        for txn in [to_commit, to_roll_back] {
            let answer = self.prepare(txn).await;
            if !matches!(answer, Ok(PrepareAnswer::Prepared)) {
                let failure = format!(
                    "expected {txn} to prepare (2xx) before the restart, got {}",
                    describe(&answer)
                );
                self.record("prepare-before-restart", Err(failure));
                self.skip(&names_after, "nothing prepared before the restart");
                return;
            }
        }
        let rolled_back = self.finish(forgotten, Outcome::Abort).await;
        let before = expect_done(forgotten, "rollback", &rolled_back).map(|_| {
            Some(format!(
                "{to_commit} and {to_roll_back} prepared, unknown {forgotten} rolled back"
            ))
        });
        self.record("prepare-before-restart", before);
        let started = Instant::now();
        let restarted = run_restart_command(command, patience).await;
        let restarted = match restarted {
            Ok(()) => self.wait_answering(started + patience).await,
            Err(failure) => Err(failure),
        };
        let answering = restarted.is_ok();
        self.record(
            "service-answers-after-restart",
            restarted.map(|elapsed| Some(format!("after {} ms", elapsed.as_millis()))),
        );
        if !answering {
            self.skip(&names_after[1..], "the service did not come back");
            return;
        }
        let verdict = self.check_survivors(&[to_commit, to_roll_back]).await;
        self.record("prepared-survives-restart", verdict);
        let verdict = self
            .check_finish_after_restart(to_commit, Outcome::Commit)
            .await;
        self.record("commit-after-restart", verdict);
        let verdict = self
            .check_finish_after_restart(to_roll_back, Outcome::Abort)
            .await;
        self.record("rollback-after-restart", verdict);
        let verdict = self
            .expect_refused(forgotten, "it was rolled back before the restart")
            .await;
        self.record("rollback-remembered-across-restart", verdict);
    }

    /// Waits until `GET /dtx/prepared` answers 2xx again; the time it took.
    async fn wait_answering(&self, deadline: Instant) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let last = match self.participant.list_prepared().await {
                Ok(_) => return Ok(started.elapsed()),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "expected the service to answer GET /dtx/prepared again after the \
                     restart command, still {last} at the deadline"
                ));
            }
            tokio::time::sleep(RESTART_POLL_INTERVAL).await;
        }
    }

    async fn check_survivors(&self, txns: &[TxnId]) -> Verdict {
        for txn in txns {
            self.expect_listed(*txn, 1, "after the restart (a 2xx to prepare is durable)")
                .await?;
        }
        Ok(None)
    }

    async fn check_finish_after_restart(&mut self, txn: TxnId, outcome: Outcome) -> Verdict {
        let name = match outcome {
            Outcome::Commit => "commit",
            Outcome::Abort => "rollback",
        };
        expect_done(txn, name, &self.finish(txn, outcome).await)?;
        self.expect_listed(txn, 0, &format!("after its {name}"))
            .await
    }

    /// `txn` is listed exactly `times` in `/dtx/prepared`.
    async fn expect_listed(&self, txn: TxnId, times: usize, when: &str) -> Verdict {
        let listed = self.times_listed(txn).await?;
        if listed == times {
            return Ok(None);
        }
        Err(format!(
            "expected {txn} listed {times} time(s) in /dtx/prepared {when}, listed {listed} \
             time(s)"
        ))
    }

    /// A prepare of `txn` is refused (4xx) and leaves nothing prepared.
    async fn expect_refused(&mut self, txn: TxnId, because: &str) -> Verdict {
        let answer = self.prepare(txn).await;
        let listed = self.times_listed(txn).await?;
        if matches!(answer, Ok(PrepareAnswer::Refused { .. })) && listed == 0 {
            return Ok(None);
        }
        Err(format!(
            "expected a refusal (4xx) of a prepare of {txn} because {because}, got {}, and \
             {txn} listed {listed} time(s) in /dtx/prepared",
            describe(&answer)
        ))
    }

    /// Rolls back what this run prepared and did not finish (best effort: a broken
    /// service may keep it).
    async fn clean_up(&mut self) {
        let unfinished: Vec<TxnId> = self.unfinished.iter().copied().collect();
        for txn in unfinished {
            if let Err(error) = self.finish(txn, Outcome::Abort).await {
                eprintln!("warning: {txn} may still be held by the service: {error}");
            }
        }
    }
}

/// Runs `command` with `sh -c`, its output on this process's standard error; it must end
/// (successfully) within `patience` (a service it starts must run in the background).
async fn run_restart_command(command: &str, patience: Duration) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot run the restart command with sh -c: {error}"))?;
    match tokio::time::timeout(patience, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!(
            "expected the restart command to succeed, it exited with {status}"
        )),
        Ok(Err(error)) => Err(format!(
            "the restart command could not be waited for: {error}"
        )),
        Err(_elapsed) => Err(format!(
            "expected the restart command to end within {} ms (start the service in the \
             background, e.g. `... &`); it was killed",
            patience.as_millis()
        )),
    }
}

fn expect_prepared(txn: TxnId, answer: &Result<PrepareAnswer, CallError>) -> Verdict {
    match answer {
        Ok(PrepareAnswer::Prepared) => Ok(None),
        other => Err(format!(
            "expected prepared (2xx) for {txn}, got {}",
            describe(other)
        )),
    }
}

fn expect_done(txn: TxnId, what: &str, result: &Result<(), CallError>) -> Verdict {
    match result {
        Ok(()) => Ok(None),
        Err(error) => Err(format!("expected 2xx to the {what} of {txn}, got {error}")),
    }
}

/// What a prepare came back with, in words.
fn describe(answer: &Result<PrepareAnswer, CallError>) -> String {
    match answer {
        Ok(PrepareAnswer::Prepared) => "prepared (2xx)".to_string(),
        Ok(PrepareAnswer::Refused { reason }) => format!("a refusal (4xx): {reason}"),
        Err(error) => format!("no valid answer ({error})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_parse_from_the_contract_shape() {
        let operations = parse_operations(DEFAULT_OPERATIONS).expect("default");
        assert!(matches!(&operations[..], [Operation::Call { action, .. }] if action == "check"));
        assert!(parse_operations("[]").is_err());
        assert!(parse_operations("{}").is_err());
        assert!(parse_operations("[{\"kind\":\"fly\"}]").is_err());
        assert!(parse_operations("not json").is_err());
    }
}
