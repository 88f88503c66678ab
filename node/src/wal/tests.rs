use super::*;
use dtx_protocol::{
    Client, ClientConfig, Cluster, Input, Key, Member, Node, NodeConfig, NodeId, Operation, Output,
    Time, Value,
};
use std::collections::BTreeMap;
use std::time::Duration;

fn temporary_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtx-wal-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn cluster() -> Cluster {
    let members = (1..=3)
        .map(|index| Member {
            id: NodeId(index),
            name: format!("n{index}"),
        })
        .collect();
    Cluster::new(members, 1).unwrap()
}

/// Runs a small in-process cluster (instant delivery, instant persistence) with
/// conflicting transactions, and returns every record each node persisted, in order.
fn generate_logs(transactions: u64, seed: u64) -> BTreeMap<NodeId, Vec<Record>> {
    generate_logs_over_keys(transactions, 12, seed)
}

/// [`generate_logs`] over `keys` keys.
fn generate_logs_over_keys(
    transactions: u64,
    keys: u64,
    seed: u64,
) -> BTreeMap<NodeId, Vec<Record>> {
    let cluster = cluster();
    let mut client = Client::new(ClientConfig::new(NodeId(100), cluster.clone(), seed));
    let mut nodes: BTreeMap<NodeId, Node> = (1..=3)
        .map(|index| {
            (
                NodeId(index),
                Node::new(NodeConfig::new(NodeId(index), cluster.clone(), seed)),
            )
        })
        .collect();
    let mut logs: BTreeMap<NodeId, Vec<Record>> = BTreeMap::new();
    let mut rng = dtx_protocol::Rng::new(seed);
    let mut now = Time::ZERO;
    let mut sequence = 0u64;
    while sequence < transactions {
        // Begin a few at once so that some collide on locks and vote Aborted.
        for _ in 0..3 {
            sequence += 1;
            let mut operations = Vec::new();
            for _ in 0..2 {
                let key = Key::new(format!("k{}", rng.below(keys)));
                let operation = match rng.below(4) {
                    0 => Operation::Read {
                        key,
                        expected: None,
                    },
                    1 => Operation::Update {
                        key,
                        value: Value::new(format!("u{sequence}").into_bytes()),
                    },
                    2 => Operation::Delete { key },
                    _ => Operation::Write {
                        key,
                        value: Value::new(format!("v{sequence}").into_bytes()),
                    },
                };
                operations.push(operation);
            }
            client.begin(now, operations).unwrap();
        }
        let mut mail: Vec<(NodeId, dtx_protocol::Envelope)> = Vec::new();
        // Timers: an acceptor that holds state for a transaction no one told it the
        // outcome of (an Aborted vote reaches every acceptor) asks after its timeout.
        for node in nodes.values_mut() {
            if node.poll_timeout().is_some_and(|due| due <= now) {
                node.handle(now, Input::Timeout);
            }
        }
        if client.poll_timeout().is_some_and(|due| due <= now) {
            client.handle(now, Input::Timeout);
        }
        for node in nodes.values_mut() {
            while let Some(output) = node.poll_output() {
                match output {
                    Output::Persist { token, records } => {
                        logs.entry(node.id()).or_default().extend(records);
                        node.handle(now, Input::Persisted { token });
                    }
                    Output::Send(envelope) => mail.push((node.id(), envelope)),
                }
            }
        }
        while let Some(envelope) = client.poll_output() {
            mail.push((client.id(), envelope));
        }
        while !mail.is_empty() {
            let pick = rng.below(mail.len() as u64) as usize;
            let (from, envelope) = mail.swap_remove(pick);
            let input = Input::Receive {
                from,
                messages: envelope.messages,
            };
            if envelope.to == client.id() {
                client.handle(now, input);
            } else {
                let node = nodes.get_mut(&envelope.to).unwrap();
                node.handle(now, input);
                while let Some(output) = node.poll_output() {
                    match output {
                        Output::Persist { token, records } => {
                            logs.entry(node.id()).or_default().extend(records);
                            node.handle(now, Input::Persisted { token });
                        }
                        Output::Send(envelope) => mail.push((node.id(), envelope)),
                    }
                }
            }
            while let Some(envelope) = client.poll_output() {
                mail.push((client.id(), envelope));
            }
        }
        now = now.saturating_add(Duration::from_millis(10));
        while client.poll_event().is_some() {}
    }
    logs
}

fn recover(id: NodeId, records: Vec<Record>) -> Node {
    Node::recover(NodeConfig::new(id, cluster(), 7), Time(1_000), records)
}

#[test]
fn compaction_replays_to_the_same_node_state() {
    for seed in 1..=20 {
        for (id, records) in generate_logs(60, seed) {
            let original = records.len();
            let compacted = compact::compact(records.clone(), 1_000_000);
            assert!(compacted.len() <= original);
            let expected = recover(id, records);
            let actual = recover(id, compacted);
            assert_eq!(expected.store(), actual.store(), "seed {seed} node {id}");
            assert!(
                expected == actual,
                "seed {seed} node {id}: node state differs"
            );
        }
    }
}

#[test]
fn compaction_of_a_prefix_then_the_rest_replays_the_same() {
    for seed in 21..=30 {
        for (id, records) in generate_logs(60, seed) {
            let cut = records.len() / 2;
            let mut compacted = compact::compact(records[..cut].to_vec(), 1_000_000);
            compacted.extend_from_slice(&records[cut..]);
            assert!(
                recover(id, records) == recover(id, compacted),
                "seed {seed}"
            );
        }
    }
}

#[test]
fn compaction_drops_superseded_records() {
    let logs = generate_logs(200, 99);
    let records: Vec<Record> = logs.into_values().next().unwrap();
    let compacted = compact::compact(records.clone(), 1_000_000);
    assert!(
        compacted.len() < records.len() * 3 / 4,
        "{} of {}",
        compacted.len(),
        records.len()
    );
}

fn open(options: WalOptions) -> (Wal, Recovered, mpsc::Receiver<WalEvent>) {
    let (events, receiver) = mpsc::channel(1024);
    let (wal, recovered) = Wal::open(options, events).unwrap();
    (wal, recovered, receiver)
}

async fn append_all(wal: &Wal, events: &mut mpsc::Receiver<WalEvent>, batches: &[Vec<Record>]) {
    for (index, records) in batches.iter().enumerate() {
        wal.append(index as u64 + 1, records.clone()).await.unwrap();
    }
    let last = batches.len() as u64;
    loop {
        match events.recv().await.unwrap() {
            WalEvent::Durable(token) if token >= last => return,
            WalEvent::Durable(_) => {}
            WalEvent::Failed(error) => panic!("{error}"),
        }
    }
}

fn sample_batches(count: u32) -> Vec<Vec<Record>> {
    (0..count)
        .map(|index| vec![Record::LeaderRound { round: index }])
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn appended_records_survive_a_reopen_in_order() {
    let dir = temporary_dir("reopen");
    let batches = sample_batches(50);
    runtime().block_on(async {
        let (wal, recovered, mut events) = open(WalOptions::new(&dir));
        assert!(recovered.records.is_empty());
        append_all(&wal, &mut events, &batches).await;
    });
    let (_wal, recovered, _events) = open(WalOptions::new(&dir));
    let expected: Vec<Record> = batches.into_iter().flatten().collect();
    assert_eq!(recovered.records, expected);
    assert!(recovered.tail_problem.is_none());
    let _ = fs::remove_dir_all(&dir);
}

fn segment_with_records(dir: &Path) -> PathBuf {
    let listing = list(dir).unwrap();
    listing
        .segments
        .iter()
        .map(|number| dir.join(segment_name(*number)))
        .find(|path| !decode_log(&fs::read(path).unwrap()).records.is_empty())
        .unwrap()
}

/// Where the records of a segment end (preallocated zeros follow).
fn valid_length(path: &Path) -> usize {
    decode_log(&fs::read(path).unwrap()).valid_length_bytes
}

#[test]
fn torn_tail_is_cut_at_recovery_and_earlier_records_survive() {
    let dir = temporary_dir("torn");
    let batches = sample_batches(10);
    runtime().block_on(async {
        let (wal, _, mut events) = open(WalOptions::new(&dir));
        append_all(&wal, &mut events, &batches).await;
    });
    // A crash mid-write: half of one more record reached the file.
    let mut torn = Vec::new();
    encode_record(&Record::LeaderRound { round: 77 }, &mut torn).unwrap();
    let path = segment_with_records(&dir);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&torn[..torn.len() / 2], valid_length(&path) as u64)
        .unwrap();
    drop(file);
    // Make the torn segment the last one.
    for number in list(&dir).unwrap().segments {
        let other = dir.join(segment_name(number));
        if other != path {
            fs::remove_file(other).unwrap();
        }
    }
    let (_wal, recovered, _events) = open(WalOptions::new(&dir));
    assert_eq!(recovered.records.len(), 10);
    assert!(recovered.cut_bytes > 0);
    assert!(recovered.tail_problem.unwrap().contains("checksum"));
    drop(_wal);
    let (_wal, again, _events) = open(WalOptions::new(&dir));
    assert_eq!(again.records.len(), 10);
    assert!(again.tail_problem.is_none(), "the cut is durable");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_record_in_the_last_segment_is_cut_with_a_checksum_error() {
    let dir = temporary_dir("corrupt-last");
    let batches = sample_batches(10);
    runtime().block_on(async {
        let (wal, _, mut events) = open(WalOptions::new(&dir));
        append_all(&wal, &mut events, &batches).await;
    });
    let path = segment_with_records(&dir);
    let mut bytes = fs::read(&path).unwrap();
    let last = valid_length(&path) - 1;
    bytes[last] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    for number in list(&dir).unwrap().segments {
        let other = dir.join(segment_name(number));
        if other != path {
            fs::remove_file(other).unwrap();
        }
    }
    let (_wal, recovered, _events) = open(WalOptions::new(&dir));
    assert_eq!(recovered.records.len(), 9);
    assert!(recovered.tail_problem.unwrap().contains("checksum"));
    let _ = fs::remove_dir_all(&dir);
}

/// Preallocation: records written across several zero-filled chunks (and a segment
/// roll) all come back, the file is never shorter than what was written, and each
/// segment's size is a whole number of chunks (records overwrite zeros, the file
/// grows a chunk at a time).
#[test]
fn records_across_preallocated_chunks_survive_a_reopen() {
    let dir = temporary_dir("prealloc");
    let mut options = WalOptions::new(&dir);
    options.segment_bytes_max = 64 * 1024;
    let chunk = PREALLOCATE_BYTES.min(options.segment_bytes_max);
    let batches: Vec<Vec<Record>> = (0..3_000u32)
        .map(|round| vec![Record::LeaderRound { round }])
        .collect();
    runtime().block_on(async {
        let (wal, _, mut events) = open(options.clone());
        append_all(&wal, &mut events, &batches).await;
    });
    // The writer may still be starting the next segment.
    wait_until_quiet(&dir, false);
    let listing = list(&dir).unwrap();
    assert!(listing.segments.len() > 1, "{listing:?}");
    for number in &listing.segments {
        let length = fs::metadata(dir.join(segment_name(*number))).unwrap().len();
        assert!(
            length > 0 && length.is_multiple_of(chunk),
            "segment {number}: {length} bytes"
        );
    }
    let (_wal, recovered, _events) = open(options);
    assert!(recovered.tail_problem.is_none());
    assert_eq!(recovered.cut_bytes, 0);
    let expected: Vec<Record> = batches.into_iter().flatten().collect();
    assert_eq!(recovered.records, expected);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_record_before_the_last_segment_refuses_to_open() {
    let dir = temporary_dir("corrupt-middle");
    // Two runs: two segments with records.
    for _ in 0..2 {
        runtime().block_on(async {
            let (wal, _, mut events) = open(WalOptions::new(&dir));
            append_all(&wal, &mut events, &sample_batches(5)).await;
        });
    }
    let path = segment_with_records(&dir);
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let (events, _receiver) = mpsc::channel(8);
    let error = Wal::open(WalOptions::new(&dir), events).err().unwrap();
    assert!(matches!(error, WalOpenError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("checksum"), "{error}");
    let _ = fs::remove_dir_all(&dir);
}

/// Waits until a background checkpoint has started (if `expect_checkpoint`) and the
/// directory has stopped changing.
fn wait_until_quiet(dir: &Path, expect_checkpoint: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while expect_checkpoint && std::time::Instant::now() < deadline {
        if !list_without_cleanup(dir).unwrap().checkpoints.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut previous = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = format!("{:?}", directory_files(dir));
        if now == previous {
            break;
        }
        previous = now;
    }
}

/// Names and sizes of the files in `dir`.
fn directory_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let length = entry.metadata().map(|meta| meta.len()).unwrap_or(0);
            (entry.file_name().to_string_lossy().into_owned(), length)
        })
        .collect();
    files.sort();
    files
}

fn directory_bytes(dir: &Path) -> u64 {
    directory_files(dir).iter().map(|(_, length)| length).sum()
}

fn recover_with_window(id: NodeId, window: usize, records: Vec<Record>) -> Node {
    let mut config = NodeConfig::new(id, cluster(), 7);
    config.limits.outcomes_kept_max = window;
    Node::recover(config, Time(1_000), records)
}

#[test]
fn checkpoint_bounds_the_log_and_recovers_the_same_state() {
    let dir = temporary_dir("checkpoint");
    let logs = generate_logs(300, 5);
    let (id, records) = logs.into_iter().next().unwrap();
    let batches: Vec<Vec<Record>> = records.chunks(3).map(|chunk| chunk.to_vec()).collect();
    let mut options = WalOptions::new(&dir);
    options.checkpoint_after_bytes = 4 * 1024;
    options.segment_bytes_max = 2 * 1024;
    runtime().block_on(async {
        let (wal, _, mut events) = open(options.clone());
        append_all(&wal, &mut events, &batches).await;
    });
    wait_until_quiet(&dir, true);
    let (_wal, recovered, _events) = open(options);
    let listing = list_without_cleanup(&dir).unwrap();
    assert_eq!(listing.checkpoints.len(), 1, "{listing:?}");
    assert!(recovered.records.len() < records.len());
    assert!(recover(id, records) == recover(id, recovered.records));
    let _ = fs::remove_dir_all(&dir);
}

/// Issue 4: "checkpoints so that recovery reads a bounded log; old segments deleted after
/// a checkpoint". Thousands of transactions over 12 keys: the log directory stays within
/// a few checkpoint periods, recovery reads a handful of small files, and the node it
/// rebuilds is the one the whole history rebuilds.
#[test]
fn log_directory_stays_bounded_over_many_transactions_on_few_keys() {
    let dir = temporary_dir("bounded");
    let window = 64;
    let logs = generate_logs(3_000, 11);
    let (id, records) = logs.into_iter().next().unwrap();
    let mut options = WalOptions::new(&dir);
    options.checkpoint_after_bytes = 16 * 1024;
    options.segment_bytes_max = 8 * 1024;
    options.outcomes_window = window;
    let mut appended_bytes = 0;
    for record in &records {
        let mut bytes = Vec::new();
        encode_record(record, &mut bytes).unwrap();
        appended_bytes += bytes.len() as u64;
    }
    let mut largest_directory_bytes = 0;
    runtime().block_on(async {
        let (wal, _, mut events) = open(options.clone());
        let mut token = 0;
        for chunk in records.chunks(64) {
            let batches: Vec<Vec<Record>> = chunk.chunks(4).map(<[Record]>::to_vec).collect();
            for batch in batches {
                token += 1;
                wal.append(token, batch).await.unwrap();
            }
            loop {
                match events.recv().await.unwrap() {
                    WalEvent::Durable(durable) if durable >= token => break,
                    WalEvent::Durable(_) => {}
                    WalEvent::Failed(error) => panic!("{error}"),
                }
            }
            // Give a running checkpoint time to finish before the next chunk.
            tokio::time::sleep(Duration::from_millis(2)).await;
            largest_directory_bytes = largest_directory_bytes.max(directory_bytes(&dir));
        }
    });
    wait_until_quiet(&dir, true);
    let final_directory_bytes = directory_bytes(&dir);
    let (_wal, recovered, _events) = open(options);
    // Bounded: the checkpoint (12 rows, 64 outcomes, open state) plus the segments
    // appended since it (one checkpoint period, and what arrived while a checkpoint was
    // being written), never the history.
    assert!(
        final_directory_bytes < 96 * 1024,
        "{:?}",
        directory_files(&dir)
    );
    assert!(
        appended_bytes > 20 * final_directory_bytes,
        "appended {appended_bytes} bytes, directory holds {final_directory_bytes}: {:?}",
        directory_files(&dir)
    );
    assert!(
        largest_directory_bytes < 160 * 1024,
        "directory reached {largest_directory_bytes} of {appended_bytes} bytes appended"
    );
    assert!(recovered.files_read <= 12, "{} files", recovered.files_read);
    assert!(
        recovered.records.len() * 10 < records.len(),
        "recovery read {} of {} records",
        recovered.records.len(),
        records.len()
    );
    let expected = recover_with_window(id, window, records);
    let actual = recover_with_window(id, window, recovered.records);
    assert_eq!(expected.store(), actual.store());
    assert!(expected == actual, "node state differs");
    let _ = fs::remove_dir_all(&dir);
}

/// A crash while a checkpoint is written (a torn `.tmp`) or after its rename but before the
/// covered segments are deleted: opening ignores the first and skips the second, and
/// recovers the same records.
#[test]
fn torn_checkpoint_and_undeleted_segments_are_ignored_at_open() {
    let dir = temporary_dir("torn-checkpoint");
    let logs = generate_logs(200, 8);
    let (id, records) = logs.into_iter().next().unwrap();
    let batches: Vec<Vec<Record>> = records.chunks(3).map(|chunk| chunk.to_vec()).collect();
    let (first_half, second_half) = batches.split_at(batches.len() / 2);
    let mut options = WalOptions::new(&dir);
    options.checkpoint_after_bytes = u64::MAX;
    options.segment_bytes_max = 2 * 1024;
    runtime().block_on(async {
        let (wal, _, mut events) = open(options.clone());
        append_all(&wal, &mut events, first_half).await;
    });
    // Keep copies of the segments the checkpoint will delete.
    let saved: Vec<(PathBuf, Vec<u8>)> = list_without_cleanup(&dir)
        .unwrap()
        .segments
        .iter()
        .map(|number| {
            let path = dir.join(segment_name(*number));
            let bytes = fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    options.checkpoint_after_bytes = 1;
    runtime().block_on(async {
        let (wal, _, mut events) = open(options.clone());
        append_all(&wal, &mut events, second_half).await;
    });
    wait_until_quiet(&dir, true);
    let listing = list_without_cleanup(&dir).unwrap();
    let newest = *listing.checkpoints.last().unwrap();
    // Crash after the rename, before the deletes: the covered segments come back.
    for (path, bytes) in &saved {
        if !path.exists() {
            fs::write(path, bytes).unwrap();
        }
    }
    // Crash in the middle of writing a later checkpoint: a torn `.tmp`.
    let checkpoint_bytes = fs::read(dir.join(checkpoint_name(newest))).unwrap();
    let torn = dir.join(format!("{}.tmp", checkpoint_name(newest + 100)));
    fs::write(&torn, &checkpoint_bytes[..checkpoint_bytes.len() / 2]).unwrap();
    options.checkpoint_after_bytes = u64::MAX;
    let (wal, recovered, _events) = open(options.clone());
    drop(wal);
    assert!(!torn.exists(), "the torn checkpoint is removed");
    for (path, _) in &saved {
        let number = parse_number(path.file_name().unwrap().to_str().unwrap(), "segment-").unwrap();
        assert_eq!(path.exists(), number > newest, "{}", path.display());
    }
    assert!(recover(id, records) == recover(id, recovered.records));
    let _ = fs::remove_dir_all(&dir);
}

/// Measurement for WHITEPAPER §9.2 (prints, asserts only equivalence): 100,000 transactions
/// over 1,000 keys from the in-process cluster, node 1's records written through the log
/// with fsync, without checkpoints and with one every 8 MiB (outcome window of the daemon,
/// 1,000,000, and of 10,000); log directory size, checkpoint composition and recovery time
/// (open + `Node::recover`) of each.
/// `cargo test --release -p dtx-node --lib measure_checkpoint -- --ignored --nocapture`
#[test]
#[ignore = "measurement: prints figures for the whitepaper"]
fn measure_checkpoint_directory_size_and_recovery_time() {
    let transactions = 100_000;
    let keys = 1_000;
    let started = std::time::Instant::now();
    let logs = generate_logs_over_keys(transactions, keys, 42);
    let (id, records) = logs.into_iter().next().unwrap();
    println!(
        "generated {transactions} transactions over {keys} keys: node {id} logged {} records in {:.1} s",
        records.len(),
        started.elapsed().as_secs_f64()
    );
    let batches: Vec<Vec<Record>> = records.chunks(8).map(<[Record]>::to_vec).collect();
    let runs = [
        ("no checkpoint", u64::MAX, 1_000_000),
        (
            "checkpoint every 8 MiB, window 1,000,000",
            8 << 20,
            1_000_000,
        ),
        ("checkpoint every 8 MiB, window 10,000", 8 << 20, 10_000),
    ];
    let mut expected_by_window: BTreeMap<usize, Node> = BTreeMap::new();
    for (run, (label, checkpoint_after_bytes, window)) in runs.into_iter().enumerate() {
        let dir = temporary_dir(&format!("measure-{run}"));
        let mut options = WalOptions::new(&dir);
        options.checkpoint_after_bytes = checkpoint_after_bytes;
        options.segment_bytes_max = 4 << 20;
        options.outcomes_window = window;
        runtime().block_on(async {
            let (wal, _, mut events) = open(options.clone());
            append_all(&wal, &mut events, &batches).await;
        });
        wait_until_quiet(&dir, checkpoint_after_bytes != u64::MAX);
        let files = directory_files(&dir);
        let listing = list_without_cleanup(&dir).unwrap();
        let mut composition: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        if let Some(number) = listing.checkpoints.last() {
            for record in read_whole(&dir.join(checkpoint_name(*number))).unwrap() {
                let mut bytes = Vec::new();
                encode_record(&record, &mut bytes).unwrap();
                let kind = match record {
                    Record::Snapshot { .. } => "rows",
                    Record::Outcomes { .. } => "outcomes",
                    _ => "open state and leader round",
                };
                let entry = composition.entry(kind).or_default();
                entry.0 += 1;
                entry.1 += bytes.len();
            }
        }
        let opening = std::time::Instant::now();
        let (wal, recovered, _events) = open(options.clone());
        let open_seconds = opening.elapsed().as_secs_f64();
        let recovering = std::time::Instant::now();
        let record_count = recovered.records.len();
        let node = recover_with_window(id, window, recovered.records);
        let recover_seconds = recovering.elapsed().as_secs_f64();
        drop(wal);
        println!(
            "{label}: directory {} files, {} bytes; checkpoint (records, bytes) {composition:?}; \
             recovery read {} files, {record_count} records: open {open_seconds:.3} s + Node::recover {recover_seconds:.3} s; \
             {} rows, {} open transactions",
            files.len(),
            directory_bytes(&dir),
            recovered.files_read,
            node.store().rows().len(),
            node.undecided().count(),
        );
        let expected = expected_by_window
            .entry(window)
            .or_insert_with(|| recover_with_window(id, window, records.clone()));
        assert!(*expected == node, "{label}: node state differs");
        let _ = fs::remove_dir_all(&dir);
    }
}
