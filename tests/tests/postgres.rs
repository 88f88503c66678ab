//! A service's own PostgreSQL as a participant, in real processes on 127.0.0.1: three
//! data nodes and service nodes started with `dtx node --participant postgres://...
//! --actions FILE`, each in front of its own database of a PostgreSQL server this test
//! starts (`dtx_cli::local_postgres`; PostgreSQL must be installed: `.ci/run` installs it,
//! and without it these tests fail saying so).
//!
//! To land a crash between prepare and commit on purpose, a test holds a row of one
//! service's database with a prepared transaction of its own (`blocker`): that service's
//! prepare waits for the row while the other service has already prepared. Every test
//! ends by asking PostgreSQL itself: the services' rows agree with each other and with
//! what the client was told, and no prepared transaction is left (the counterpart of
//! `postgres_native.rs`, where a dead coordinator leaves an orphan holding its locks).

mod common;

use common::{create_cluster, executable, finish};
use dtx_cli::local::LocalCluster;
use dtx_cli::local_postgres::LocalPostgres;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to settle what a crash left open.
const SETTLE_PATIENCE: Duration = Duration::from_secs(60);

/// How long a test waits for a service to prepare.
const PREPARE_PATIENCE: Duration = Duration::from_secs(30);

/// The actions of every service in these tests (each has its own `stock` table).
fn actions(lock_timeout: &str) -> String {
    format!(
        r#"
[settings]
connections = 4
lock_timeout = "{lock_timeout}"
startup_wait = "20s"

[actions.reserve]
sql = "UPDATE stock SET qty = qty - $qty WHERE sku = $sku AND qty >= $qty"
rows = 1
refuse = "out of stock: $sku"

[actions.take]
sql = "UPDATE stock SET qty = qty - $qty WHERE sku = $sku"

[[actions.order.steps]]
sql = "UPDATE stock SET qty = qty - $qty WHERE sku = $sku AND qty >= $qty"
rows = 1
refuse = "out of stock: $sku"
[[actions.order.steps]]
sql = "INSERT INTO orders (order_id, sku, qty) VALUES ($order, $sku, $qty)"
"#
    )
}

const SCHEMA: &str =
    "CREATE TABLE stock (sku text PRIMARY KEY, qty integer NOT NULL CHECK (qty >= 0)); \
     CREATE TABLE orders (order_id text PRIMARY KEY, sku text NOT NULL, qty integer NOT NULL); \
     INSERT INTO stock VALUES ('apple', 10), ('pear', 10)";

/// One service: its node's name, its PostgreSQL server (index) and database.
struct Service {
    name: &'static str,
    server: usize,
}

/// Three data nodes, PostgreSQL servers and service nodes, started.
struct Shop {
    cluster: LocalCluster,
    servers: Vec<LocalPostgres>,
    services: Vec<Service>,
}

/// `services`: (node name = database name, server index, lock_timeout).
fn shop(test: &str, servers: usize, services: &[(&'static str, usize, &str)]) -> Shop {
    let servers: Vec<LocalPostgres> = (0..servers)
        .map(|index| {
            LocalPostgres::start(&format!("{test}-{index}"))
                .unwrap_or_else(|error| panic!("PostgreSQL is required for these tests: {error}"))
        })
        .collect();
    let mut cluster = create_cluster(test, 3, 1);
    for (name, server, lock_timeout) in services {
        let added = Command::new(executable())
            .args(["add-node", "--name", name, "--role", "service", "--config"])
            .arg(&cluster.config_path)
            .output()
            .expect("dtx add-node");
        assert!(added.status.success(), "add-node: {added:?}");
        let postgres = &servers[*server];
        postgres.create_database(name).expect("create database");
        postgres.sql(name, SCHEMA).expect("schema");
        let file = cluster.dir.join(format!("{name}.toml"));
        std::fs::write(&file, actions(lock_timeout)).expect("actions file");
        let file = file.display().to_string();
        cluster.set_args(
            name,
            &["--participant", &postgres.url(name), "--actions", &file],
        );
    }
    cluster.reload().expect("reload the config");
    cluster.start_all().expect("start");
    Shop {
        cluster,
        servers,
        services: services
            .iter()
            .map(|(name, server, _)| Service {
                name,
                server: *server,
            })
            .collect(),
    }
}

impl Shop {
    fn server_of(&self, service: &str) -> &LocalPostgres {
        let service = self
            .services
            .iter()
            .find(|known| known.name == service)
            .expect("a service of this shop");
        &self.servers[service.server]
    }

    /// `dtx txn OPERATIONS...`, waited for.
    fn txn(&self, operations: &[&str]) -> Output {
        self.txn_command(operations).output().expect("dtx txn")
    }

    fn txn_command(&self, operations: &[&str]) -> Command {
        let mut command = Command::new(executable());
        command
            .args(["txn", "--config"])
            .arg(&self.cluster.config_path)
            .args(operations)
            .stdin(Stdio::null());
        command
    }

    /// One SQL query's output at `service`'s database.
    fn sql(&self, service: &str, text: &str) -> String {
        self.server_of(service)
            .sql(service, text)
            .unwrap_or_else(|error| panic!("{service}: {text}: {error}"))
    }

    /// `sku`'s stock at `service`, read once no transaction of dtx's is still prepared
    /// there: a client hears "committed" when the transaction is decided, and the
    /// service applies the decision just after, so a direct read must wait for it.
    fn quantity(&self, service: &str, sku: &str) -> i64 {
        self.wait_settled();
        let text = self.sql(
            service,
            &format!("SELECT qty FROM stock WHERE sku = '{sku}'"),
        );
        text.parse()
            .unwrap_or_else(|_| panic!("{service}: quantity of {sku}: {text:?}"))
    }

    /// dtx's prepared transactions at `service`'s database.
    fn dtx_prepared(&self, service: &str) -> Vec<String> {
        self.server_of(service)
            .prepared_gids(service)
            .unwrap_or_else(|error| panic!("{service}: prepared list: {error}"))
            .into_iter()
            .filter(|gid| gid.starts_with("dtx-"))
            .collect()
    }

    /// Holds `sku`'s row at `service` with a prepared transaction named `blocker`.
    fn block(&self, service: &str, sku: &str) {
        self.sql(
            service,
            &format!(
                "BEGIN; UPDATE stock SET qty = qty WHERE sku = '{sku}'; \
                 PREPARE TRANSACTION 'blocker-{service}'"
            ),
        );
    }

    fn unblock(&self, service: &str) {
        self.sql(service, &format!("ROLLBACK PREPARED 'blocker-{service}'"));
    }

    /// Waits until `service`'s database holds one of dtx's prepared transactions.
    fn wait_prepared(&self, service: &str) -> String {
        let deadline = Instant::now() + PREPARE_PATIENCE;
        loop {
            if let Some(gid) = self.dtx_prepared(service).into_iter().next() {
                return gid;
            }
            assert!(
                Instant::now() < deadline,
                "{service} prepared nothing in {PREPARE_PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until no database of the shop holds a prepared transaction of dtx's.
    fn wait_settled(&self) {
        let deadline = Instant::now() + SETTLE_PATIENCE;
        loop {
            let left: Vec<(&str, Vec<String>)> = self
                .services
                .iter()
                .map(|service| (service.name, self.dtx_prepared(service.name)))
                .filter(|(_, prepared)| !prepared.is_empty())
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still prepared after {SETTLE_PATIENCE:?}: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a `dtx txn` child and returns whether it committed (`None`: it did not
    /// say).
    fn outcome_of(child: Child) -> (Option<bool>, String) {
        let output = child.wait_with_output().expect("dtx txn");
        let text = printed(&output);
        let committed = if output.status.success() && text.contains("committed") {
            Some(true)
        } else if text.contains("aborted") {
            Some(false)
        } else {
            None
        };
        (committed, text)
    }

    fn finish(self) {
        finish(self.cluster);
        drop(self.servers);
    }
}

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn call(service: &str, action: &str, args: &str) -> String {
    format!("call {service}/{action} {action} {args}")
}

#[test]
fn a_postgres_service_commits_refuses_with_the_databases_reason_and_holds_nothing() {
    let shop = shop("postgres-paths", 1, &[("inventory", 0, "500ms")]);
    // Commit: the database's row and dtx's own key change together.
    let committed = shop.txn(&[
        &call("inventory", "reserve", r#"{"sku":"apple","qty":2}"#),
        "write orders/1 placed",
    ]);
    assert!(committed.status.success(), "{}", printed(&committed));
    assert_eq!(shop.quantity("inventory", "apple"), 8);
    // A statement that changes no row where one must: refused with the action's text,
    // and dtx's own write of the same transaction is not applied.
    let refused = shop.txn(&[
        &call("inventory", "reserve", r#"{"sku":"apple","qty":100}"#),
        "write orders/2 placed",
    ]);
    assert!(!refused.status.success(), "{}", printed(&refused));
    assert!(
        printed(&refused).contains("out of stock: apple"),
        "{}",
        printed(&refused)
    );
    let read = Command::new(executable())
        .args(["get", "--config"])
        .arg(&shop.cluster.config_path)
        .arg("orders/2")
        .output()
        .expect("dtx get");
    assert!(
        printed(&read).contains("absent"),
        "the aborted transaction's write: {}",
        printed(&read)
    );
    // A CHECK constraint: refused with PostgreSQL's own words.
    let violated = shop.txn(&[&call("inventory", "take", r#"{"sku":"apple","qty":100}"#)]);
    assert!(
        printed(&violated).contains("violates check constraint"),
        "{}",
        printed(&violated)
    );
    // A unique key: the second order with the same id is refused, its stock untouched.
    let order = r#"{"order":"o-1","sku":"pear","qty":1}"#;
    let placed = shop.txn(&[&call("inventory", "order", order)]);
    assert!(placed.status.success(), "{}", printed(&placed));
    let again = shop.txn(&[&call("inventory", "order", order)]);
    assert!(
        printed(&again).contains("duplicate key"),
        "{}",
        printed(&again)
    );
    assert_eq!(shop.quantity("inventory", "pear"), 9);
    // A lock wait past lock_timeout: refused, not hung.
    shop.block("inventory", "pear");
    let waited = shop.txn(&[&call("inventory", "reserve", r#"{"sku":"pear","qty":1}"#)]);
    assert!(
        printed(&waited).contains("lock timeout"),
        "{}",
        printed(&waited)
    );
    shop.unblock("inventory");
    // Unknown actions and missing arguments are refused before the database is asked.
    let unknown = shop.txn(&[&call("inventory", "steal", "{}")]);
    assert!(
        printed(&unknown).contains("no action \"steal\""),
        "{}",
        printed(&unknown)
    );
    let missing = shop.txn(&[&call("inventory", "reserve", r#"{"sku":"pear"}"#)]);
    assert!(
        printed(&missing).contains("argument \"qty\" is missing"),
        "{}",
        printed(&missing)
    );
    assert_eq!(shop.quantity("inventory", "apple"), 8);
    assert_eq!(shop.quantity("inventory", "pear"), 9);
    shop.wait_settled();
    shop.finish();
}

#[test]
fn a_service_prepare_waiting_for_a_row_lock_commits_when_the_row_is_free() {
    // The wait (1 s) is far beyond the decision timeout (200 ms): the other participants
    // wait for a service's vote rather than recover (and abort) the transaction.
    let shop = shop("postgres-wait", 1, &[("inventory", 0, "20s")]);
    shop.block("inventory", "apple");
    let child = shop
        .txn_command(&[
            &call("inventory", "reserve", r#"{"sku":"apple","qty":1}"#),
            "write orders/w placed",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dtx txn");
    std::thread::sleep(Duration::from_secs(1));
    shop.unblock("inventory");
    let (committed, text) = Shop::outcome_of(child);
    assert_eq!(committed, Some(true), "{text}");
    assert_eq!(shop.quantity("inventory", "apple"), 9);
    shop.finish();
}

#[test]
fn the_service_node_and_postgres_killed_between_prepare_and_commit_finish_the_prepared_transaction_after_restart(
) {
    let mut shop = shop(
        "postgres-node-crash",
        1,
        &[("inventory", 0, "20s"), ("payment", 0, "20s")],
    );
    shop.block("payment", "apple");
    let child = shop
        .txn_command(&[
            &call("inventory", "reserve", r#"{"sku":"apple","qty":1}"#),
            &call("payment", "reserve", r#"{"sku":"apple","qty":1}"#),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dtx txn");
    let gid = shop.wait_prepared("inventory");
    // Its vote is durable and sent a moment after PostgreSQL prepared.
    std::thread::sleep(Duration::from_millis(500));
    shop.cluster.kill("inventory").expect("kill -9 inventory");
    shop.unblock("payment");
    let (committed, text) = Shop::outcome_of(child);
    // Nobody but the inventory node finishes its prepared transaction.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(shop.dtx_prepared("inventory"), vec![gid.clone()]);
    // PostgreSQL crashes too: both come back, and still nothing is orphaned.
    shop.servers[0].crash().expect("crash PostgreSQL");
    shop.servers[0].start_again().expect("restart PostgreSQL");
    assert_eq!(shop.dtx_prepared("inventory"), vec![gid.clone()]);
    shop.cluster.start("inventory").expect("restart inventory");
    shop.wait_settled();
    let inventory = shop.quantity("inventory", "apple");
    let payment = shop.quantity("payment", "apple");
    assert_eq!(
        inventory, payment,
        "both services applied the transaction or neither did ({text})"
    );
    if let Some(committed) = committed {
        assert_eq!(inventory == 9, committed, "as the client was told: {text}");
    }
    // The vote reached the acceptors before the kill: the transaction commits, and the
    // restarted node commits what PostgreSQL held prepared for it.
    assert_eq!(committed, Some(true), "{text}");
    shop.finish();
}

#[test]
fn postgres_crashed_and_restarted_while_prepared_gets_the_commit_after() {
    let shop = shop(
        "postgres-db-crash",
        2,
        &[("inventory", 0, "20s"), ("payment", 1, "20s")],
    );
    shop.block("payment", "apple");
    let child = shop
        .txn_command(&[
            &call("inventory", "reserve", r#"{"sku":"apple","qty":1}"#),
            &call("payment", "reserve", r#"{"sku":"apple","qty":1}"#),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dtx txn");
    let gid = shop.wait_prepared("inventory");
    let inventory_server = &shop.servers[0];
    inventory_server.crash().expect("crash PostgreSQL");
    inventory_server.start_again().expect("restart PostgreSQL");
    assert_eq!(
        shop.dtx_prepared("inventory"),
        vec![gid],
        "a prepared transaction survives PostgreSQL's crash"
    );
    shop.unblock("payment");
    let (committed, text) = Shop::outcome_of(child);
    shop.wait_settled();
    assert_eq!(committed, Some(true), "{text}");
    assert_eq!(
        shop.quantity("inventory", "apple"),
        9,
        "committed after the crash"
    );
    assert_eq!(shop.quantity("payment", "apple"), 9);
    shop.finish();
}

#[test]
fn a_client_killed_mid_commit_leaves_nothing_prepared_and_no_row_locked() {
    // The dtx counterpart of postgres_native.rs's orphan: the client that started the
    // commit dies after one service prepared; the nodes finish the transaction.
    let shop = shop(
        "postgres-client-crash",
        1,
        &[("inventory", 0, "20s"), ("payment", 0, "20s")],
    );
    shop.block("payment", "apple");
    let mut client = shop
        .txn_command(&[
            &call("inventory", "reserve", r#"{"sku":"apple","qty":1}"#),
            &call("payment", "reserve", r#"{"sku":"apple","qty":1}"#),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dtx txn");
    shop.wait_prepared("inventory");
    client.kill().expect("kill -9 the client");
    let _ = client.wait();
    shop.unblock("payment");
    shop.wait_settled();
    let inventory = shop.quantity("inventory", "apple");
    let payment = shop.quantity("payment", "apple");
    assert_eq!(inventory, payment, "both applied or neither");
    assert!(inventory == 9 || inventory == 10, "{inventory}");
    // No row lock outlives the transaction.
    shop.sql(
        "inventory",
        "SET lock_timeout = '500ms'; UPDATE stock SET qty = qty WHERE sku = 'apple'",
    );
    shop.finish();
}

#[test]
fn setup_errors_say_what_is_wrong() {
    let postgres = LocalPostgres::start("postgres-setup").expect("PostgreSQL");
    postgres.create_database("inventory").expect("database");
    postgres.sql("inventory", SCHEMA).expect("schema");
    let dir = dtx_cli::local::temporary_dir("dtx-test-postgres-setup");
    let cluster = LocalCluster::create(executable(), dir, vec!["n1".to_string()], 0).expect("init");
    let run = |url: &str, actions: Option<&str>| -> String {
        let mut command = Command::new(executable());
        command
            .args(["node", "--config"])
            .arg(&cluster.config_path)
            .args(["--name", "n1", "--data-dir"])
            .arg(cluster.dir.join("n1-data"))
            .args(["--participant", url]);
        if let Some(text) = actions {
            let file = cluster.dir.join("actions.toml");
            std::fs::write(&file, text).expect("actions file");
            command.arg("--actions").arg(file);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dtx node");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("dtx node started despite a bad participant ({url})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().expect("output");
        assert!(!output.status.success());
        printed(&output)
    };
    let good = actions("1s").replace("startup_wait = \"20s\"", "startup_wait = \"1s\"");
    // Nothing listens on the port.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let refused = run(
        &format!("postgres://postgres@127.0.0.1:{closed_port}/inventory"),
        Some(&good),
    );
    assert!(
        refused.contains("cannot connect to PostgreSQL"),
        "{refused}"
    );
    // An action naming a table the database lacks.
    let missing_table = good.replace("INSERT INTO orders", "INSERT INTO nowhere");
    let said = run(&postgres.url("inventory"), Some(&missing_table));
    assert!(
        said.contains("relation \"nowhere\" does not exist") && said.contains("action \"order\""),
        "{said}"
    );
    // No --actions.
    let said = run(&postgres.url("inventory"), None);
    assert!(said.contains("--actions"), "{said}");
    // Prepared transactions off.
    postgres
        .sql("postgres", "ALTER SYSTEM SET max_prepared_transactions = 0")
        .expect("alter system");
    postgres.crash().expect("stop");
    postgres.start_again().expect("start");
    let said = run(&postgres.url("inventory"), Some(&good));
    assert!(said.contains("max_prepared_transactions = 0"), "{said}");
    finish(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_participant_keeps_the_contract_repeats_and_late_prepares() {
    use dtx_node::participant::postgres::{Actions, PostgresParticipant};
    use dtx_node::participant::{Participant, PrepareAnswer};
    use dtx_protocol::{Key, Operation, Outcome, TxnId, Value};
    let postgres = LocalPostgres::start("postgres-contract").expect("PostgreSQL");
    postgres.create_database("inventory").expect("database");
    postgres.sql("inventory", SCHEMA).expect("schema");
    let participant = PostgresParticipant::connect(
        &postgres.url("inventory"),
        Actions::parse(&actions("1s")).expect("actions"),
    )
    .await
    .expect("connect");
    let reserve = vec![Operation::Call {
        target: Key::new("inventory/apple"),
        action: "reserve".to_string(),
        args: Value::new(br#"{"sku":"apple","qty":1}"#.to_vec()),
    }];
    let txn: TxnId = "t1.1".parse().expect("txn id");
    // Prepare twice: Prepared both times, the stock taken once.
    for _ in 0..2 {
        let answer = participant.prepare(txn, &reserve).await.expect("prepare");
        assert_eq!(answer, PrepareAnswer::Prepared);
    }
    assert_eq!(participant.prepared().await.expect("list"), vec![txn]);
    assert_eq!(
        postgres.prepared_gids("inventory").expect("gids"),
        vec![participant.gid(txn)]
    );
    // Commit twice: done both times, applied once.
    for _ in 0..2 {
        participant
            .finish(txn, Outcome::Commit)
            .await
            .expect("commit");
    }
    assert_eq!(
        postgres
            .sql("inventory", "SELECT qty FROM stock WHERE sku = 'apple'")
            .expect("qty"),
        "9"
    );
    assert!(participant.prepared().await.expect("list").is_empty());
    // Rollback of an unknown transaction succeeds and a late prepare of it is refused.
    let late: TxnId = "t1.2".parse().expect("txn id");
    participant
        .finish(late, Outcome::Abort)
        .await
        .expect("rollback of the unknown");
    let answer = participant.prepare(late, &reserve).await.expect("prepare");
    assert!(
        matches!(answer, PrepareAnswer::Refused { .. }),
        "{answer:?}"
    );
    assert!(participant.prepared().await.expect("list").is_empty());
    assert_eq!(
        postgres
            .sql("inventory", "SELECT qty FROM stock WHERE sku = 'apple'")
            .expect("qty"),
        "9"
    );
}
