//! Services as participants, in real processes on 127.0.0.1: three data nodes and a
//! service node `flights` started with `dtx node --participant URL` in front of the Python
//! travel provider (examples/travel/provider.py). Between the node and the provider runs a
//! small HTTP proxy of this test, which can lose an answer, refuse the commits or hold the
//! prepares, so that each crash lands between prepare and commit on purpose.
//!
//! Every test ends by asking the provider itself: what it sold (`GET /dtx/state`) agrees
//! with the transaction's outcome, and nothing is left prepared (`GET /dtx/prepared`).
//! Python 3 is required: without it these tests fail with a message saying so.

mod common;

use common::{create_cluster, executable, finish, status};
use dtx_cli::local::LocalCluster;
use dtx_node::client::Client;
use dtx_protocol::{Key, Operation, Value};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the provider may take to print its address.
const START_PATIENCE: Duration = Duration::from_secs(20);

/// How long the cluster may take to settle what a crash left open.
const SETTLE_PATIENCE: Duration = Duration::from_secs(60);

/// Largest HTTP head or body the proxy reads.
const PROXY_MESSAGE_MAX_BYTES: usize = 1 << 20;

fn provider_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/travel/provider.py")
}

/// A running provider.py (flights), restartable with kill -9 on the same port and state.
struct Provider {
    child: Child,
    port: u16,
    state: PathBuf,
    inventory: String,
}

impl Provider {
    fn start(dir: &Path, inventory: &str) -> Provider {
        fs::create_dir_all(dir).expect("provider directory");
        let state = dir.join("flights.json");
        let (child, port) = spawn_provider(&state, inventory, 0);
        Provider {
            child,
            port,
            state,
            inventory: inventory.to_string(),
        }
    }

    fn kill9(&mut self) {
        // std's kill is SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        let (child, port) = spawn_provider(&self.state, &self.inventory, self.port);
        assert_eq!(port, self.port, "restarted on its port");
        self.child = child;
    }

    fn get(&self, path: &str) -> serde_json::Value {
        http_get(self.port, path)
    }

    /// Every transaction the provider holds prepared.
    fn prepared(&self) -> Vec<String> {
        self.get("/dtx/prepared")["prepared"]
            .as_array()
            .expect("prepared list")
            .iter()
            .map(|txn| txn.as_str().expect("txn id").to_string())
            .collect()
    }

    /// (units held, units sold) of the provider's state.
    fn held_and_sold(&self) -> (usize, usize) {
        let state = self.get("/dtx/state");
        let count = |field: &str| state[field].as_array().map_or(usize::MAX, Vec::len);
        (count("held"), count("sold"))
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_provider(state: &Path, inventory: &str, port: u16) -> (Child, u16) {
    let mut child = Command::new("python3")
        .arg(provider_script())
        .args(["--kind", "flights", "--inventory", inventory, "--state"])
        .arg(state)
        .args(["--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("python3 is required (the travel provider is Python): {error}")
        });
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = sender.send(line);
        }
        // Keep reading so that the provider never blocks on a full pipe.
        for _ in lines {}
    });
    let line = receiver
        .recv_timeout(START_PATIENCE)
        .expect("provider.py printed no address");
    let port = line
        .rsplit(':')
        .next()
        .and_then(|port| port.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line of provider.py: {line:?}"));
    (child, port)
}

/// A GET to the provider on 127.0.0.1, its JSON body.
fn http_get(port: u16, path: &str) -> serde_json::Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to provider");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut reader = BufReader::new(stream);
    let (head, raw) = read_message(&mut reader)
        .expect("answer")
        .expect("an answer before the connection closed");
    assert!(head.contains(" 200 "), "GET {path}: {head}");
    let body_start = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("head end")
        + 4;
    serde_json::from_slice(&raw[body_start..]).expect("JSON body")
}

/// Reads one HTTP/1.1 message with a Content-Length body (or none): its first line and all
/// its bytes; `None` at the end of the stream.
fn read_message(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut raw = Vec::new();
    let mut first = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        raw.extend_from_slice(line.as_bytes());
        if raw.len() > PROXY_MESSAGE_MAX_BYTES {
            return Err(std::io::Error::other("head too large"));
        }
        if first.is_empty() {
            first = line.trim().to_string();
            continue;
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    if length > PROXY_MESSAGE_MAX_BYTES {
        return Err(std::io::Error::other("body too large"));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    raw.extend_from_slice(&body);
    Ok(Some((first, raw)))
}

/// What the proxy does with the node's requests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Pass everything.
    Forward,
    /// The next prepare reaches the provider, but its answer is lost (the connection to
    /// the node closes); then forward.
    LoseNextPrepareAnswer,
    /// Commit and rollback requests fail (the connection closes unanswered).
    RefuseFinish,
    /// Prepares wait this long before they go on.
    HoldPrepares(Duration),
}

/// An HTTP proxy on 127.0.0.1 between the service's node and the provider.
struct Proxy {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    /// The request lines seen, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("proxy address").port();
        let mode = Arc::new(Mutex::new(Mode::Forward));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (thread_mode, thread_seen) = (Arc::clone(&mode), Arc::clone(&seen));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (mode, seen) = (Arc::clone(&thread_mode), Arc::clone(&thread_seen));
                std::thread::spawn(move || serve_connection(stream, upstream, &mode, &seen));
            }
        });
        Proxy { port, mode, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    /// Requests seen whose line starts with `start` (e.g. `POST /dtx/prepare`).
    fn count(&self, start: &str) -> usize {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|line| line.starts_with(start))
            .count()
    }

    fn wait_for(&self, start: &str, count: usize, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.count(start) < count {
            assert!(
                Instant::now() < deadline,
                "the proxy saw {} of {count} {start:?} in {patience:?}: {:?}",
                self.count(start),
                self.seen.lock().expect("seen")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve_connection(
    stream: TcpStream,
    upstream: u16,
    mode: &Mutex<Mode>,
    seen: &Mutex<Vec<String>>,
) {
    let Ok(mut client) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Ok(Some((line, raw))) = read_message(&mut reader) {
        seen.lock().expect("seen").push(line.clone());
        let current = *mode.lock().expect("mode");
        let prepare = line.starts_with("POST /dtx/prepare");
        let finish = line.starts_with("POST /dtx/commit") || line.starts_with("POST /dtx/rollback");
        if current == Mode::RefuseFinish && finish {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        if let Mode::HoldPrepares(delay) = current {
            if prepare {
                std::thread::sleep(delay);
            }
        }
        let answer = TcpStream::connect(("127.0.0.1", upstream)).and_then(|mut server| {
            server.set_read_timeout(Some(Duration::from_secs(30)))?;
            server.write_all(&raw)?;
            read_message(&mut BufReader::new(server))
        });
        let Ok(Some((_, answer))) = answer else {
            // The provider is down: the node sees the connection close.
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        if prepare && current == Mode::LoseNextPrepareAnswer {
            *mode.lock().expect("mode") = Mode::Forward;
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        if client.write_all(&answer).is_err() {
            return;
        }
    }
}

/// Three data nodes and `flights`, whose resource is the provider behind the proxy.
struct ServiceCluster {
    cluster: LocalCluster,
    provider: Provider,
    proxy: Proxy,
}

fn service_cluster(test: &str, inventory: &str) -> ServiceCluster {
    let mut cluster = create_cluster(test, 3, 1);
    let added = Command::new(executable())
        .args(["add-node", "--name", "flights", "--config"])
        .arg(&cluster.config_path)
        .output()
        .expect("dtx add-node");
    assert!(added.status.success(), "add-node: {added:?}");
    cluster.reload().expect("reload the config");
    let provider = Provider::start(&cluster.dir.join("provider"), inventory);
    let proxy = Proxy::start(provider.port);
    cluster.set_args("flights", &["--participant", &proxy.url()]);
    cluster.start_all().expect("start");
    ServiceCluster {
        cluster,
        provider,
        proxy,
    }
}

impl ServiceCluster {
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

    /// Waits until the provider holds nothing prepared and the service's node owes it
    /// nothing; panics with both views after [`SETTLE_PATIENCE`].
    async fn wait_settled(&self) {
        let deadline = Instant::now() + SETTLE_PATIENCE;
        loop {
            let prepared = self.provider.prepared();
            let resource = status(&self.cluster, "flights").await.resource;
            let owed = resource
                .as_ref()
                .map(|resource| resource.unacknowledged + resource.preparing);
            if prepared.is_empty() && owed == Some(0) && resource.is_some_and(|r| !r.settling) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not settled in {SETTLE_PATIENCE:?}: provider holds {prepared:?}, node's resource {:?}",
                status(&self.cluster, "flights").await.resource
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn finish(self) {
        drop(self.provider);
        finish(self.cluster);
    }
}

fn reserve(trip: &str) -> String {
    format!(r#"call flights/LH400 reserve {{"item":"LH400","trip":"{trip}"}}"#)
}

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn read_key(client: &Client, key: &str) -> Option<Value> {
    let deadline = Instant::now() + SETTLE_PATIENCE;
    loop {
        let read = Operation::Read {
            key: Key::new(key),
            expected: None,
        };
        match client.run(vec![read]).await {
            Ok(committed) => return committed.reads[0].value.clone(),
            Err(error) if Instant::now() < deadline => {
                eprintln!("read {key} retried: {error:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("read {key}: {error:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_service_commits_with_its_transaction_and_its_refusal_reaches_the_client() {
    let service = service_cluster("participants-commit", "LH400=1");
    let booked = service.txn(&[&reserve("a"), "write trips/a booked"]);
    assert!(booked.status.success(), "{}", printed(&booked));
    let refused = service.txn(&[&reserve("b"), "write trips/b booked"]);
    assert!(!refused.status.success(), "{}", printed(&refused));
    assert!(
        printed(&refused).contains("no seats left on LH400"),
        "the service's reason reaches dtx txn: {}",
        printed(&refused)
    );
    let client = Client::connect(&service.cluster.config)
        .await
        .expect("connect");
    assert_eq!(
        read_key(&client, "trips/a").await,
        Some(Value::new("booked"))
    );
    assert_eq!(read_key(&client, "trips/b").await, None, "all or nothing");
    service.wait_settled().await;
    assert_eq!(service.provider.held_and_sold(), (0, 1));
    let report = status(&service.cluster, "flights").await;
    assert!(
        report.render().contains("resource: service"),
        "{}",
        report.render()
    );
    service.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prepare_whose_answer_is_lost_is_asked_again_and_holds_one_seat() {
    let service = service_cluster("participants-duplicate", "LH400=5");
    service.proxy.set(Mode::LoseNextPrepareAnswer);
    let booked = service.txn(&[&reserve("a")]);
    assert!(booked.status.success(), "{}", printed(&booked));
    assert!(
        service.proxy.count("POST /dtx/prepare") >= 2,
        "the provider saw the prepare twice: {:?}",
        service.proxy.seen.lock().expect("seen")
    );
    service.wait_settled().await;
    assert_eq!(service.provider.held_and_sold(), (0, 1), "no double effect");
    service.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_killed_between_prepare_and_commit_gets_the_commit_after_its_restart() {
    let mut service = service_cluster("participants-service-crash", "LH400=5");
    service.proxy.set(Mode::RefuseFinish);
    let booked = service.txn(&[&reserve("a"), "write trips/a booked"]);
    assert!(booked.status.success(), "{}", printed(&booked));
    service
        .proxy
        .wait_for("POST /dtx/commit", 1, Duration::from_secs(20));
    assert_eq!(
        service.provider.prepared().len(),
        1,
        "prepared, not committed"
    );
    service.provider.kill9();
    let report = status(&service.cluster, "flights").await;
    assert_eq!(
        report.resource.map(|resource| resource.unacknowledged),
        Some(1),
        "in doubt at the service while it is down"
    );
    service.proxy.set(Mode::Forward);
    service.provider.restart();
    service.wait_settled().await;
    assert_eq!(
        service.provider.held_and_sold(),
        (0, 1),
        "the commit applied"
    );
    service.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_services_node_killed_between_prepare_and_commit_settles_after_its_restart() {
    let mut service = service_cluster("participants-node-crash", "LH400=5");
    service.proxy.set(Mode::RefuseFinish);
    let booked = service.txn(&[&reserve("a"), "write trips/a booked"]);
    assert!(booked.status.success(), "{}", printed(&booked));
    service
        .proxy
        .wait_for("POST /dtx/commit", 1, Duration::from_secs(20));
    service.cluster.kill("flights").expect("kill -9 flights");
    assert_eq!(
        service.provider.prepared().len(),
        1,
        "prepared, not committed"
    );
    service.proxy.set(Mode::Forward);
    service.cluster.start("flights").expect("restart flights");
    service.wait_settled().await;
    assert_eq!(
        service.provider.held_and_sold(),
        (0, 1),
        "the commit applied"
    );
    service.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_killed_mid_transaction_is_resolved_by_the_nodes_with_nothing_left_prepared() {
    let service = service_cluster("participants-client-crash", "LH400=5");
    service
        .proxy
        .set(Mode::HoldPrepares(Duration::from_millis(1500)));
    let mut client_process = service
        .txn_command(&[&reserve("c"), "write trips/c booked"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dtx txn");
    service
        .proxy
        .wait_for("POST /dtx/prepare", 1, Duration::from_secs(20));
    client_process.kill().expect("kill -9 the client");
    let _ = client_process.wait();
    service.proxy.set(Mode::Forward);
    service.wait_settled().await;
    let client = Client::connect(&service.cluster.config)
        .await
        .expect("connect");
    let written = read_key(&client, "trips/c").await.is_some();
    let (held, sold) = service.provider.held_and_sold();
    assert_eq!(held, 0);
    assert_eq!(
        sold,
        usize::from(written),
        "the service sold a seat exactly when the transaction's write committed"
    );
    service.finish();
}
