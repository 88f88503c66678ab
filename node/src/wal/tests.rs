//! Unit tests of the write-ahead log: compaction replays, appends and reopens, torn tails
//! and corruption at every place the module doc argues about, `dtx wal verify`,
//! checkpoints and the crash hook. One long file on purpose: the cases share one set of
//! fixtures (generated protocol logs, byte surgery on segment files, waiting for the
//! writer to go quiet), and read top to bottom as the catalogue of what recovery must cut
//! and what it must refuse.

use super::checkpoint::read_sealed;
use super::directory::{checkpoint_name, list_without_cleanup, parse_number, segment_name};
use super::format::{align_up, encode_batch, Expectation, FileHeader};
use super::*;
use dtx_protocol::{
    encode_record, Client, ClientConfig, Cluster, Input, Key, Member, Node, NodeConfig, NodeId,
    Operation, Output, Time, Value,
};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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
                    Output::Resource(_) => {} // built-in store
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
                        Output::Resource(_) => {} // built-in store
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
        let (wal, recovered, mut events) = open(options(&dir));
        assert!(recovered.records.is_empty());
        append_all(&wal, &mut events, &batches).await;
    });
    let (_wal, recovered, _events) = open(options(&dir));
    let expected: Vec<Record> = batches.into_iter().flatten().collect();
    assert_eq!(recovered.records, expected);
    assert!(recovered.tail_problem.is_none());
    let _ = fs::remove_dir_all(&dir);
}

const CLUSTER_ID: &str = "test-cluster";
const NODE_ID: u64 = 1;

fn options(dir: &Path) -> WalOptions {
    WalOptions::new(dir, CLUSTER_ID, NODE_ID)
}

fn open_error(options: WalOptions) -> WalOpenError {
    let (events, _receiver) = mpsc::channel(8);
    match Wal::open(options, events) {
        Ok(_) => panic!("the log opened"),
        Err(error) => error,
    }
}

/// Appends each batch as its own group commit (waits until it is durable before the
/// next), so that each becomes exactly one batch on disk; then waits for the writer to
/// go idle.
fn append_one_batch_each(dir: &Path, batches: &[Vec<Record>]) {
    runtime().block_on(async {
        let (wal, _, mut events) = open(options(dir));
        for (index, records) in batches.iter().enumerate() {
            let token = index as u64 + 1;
            wal.append(token, records.clone()).await.unwrap();
            loop {
                match events.recv().await.unwrap() {
                    WalEvent::Durable(durable) if durable >= token => break,
                    WalEvent::Durable(_) => {}
                    WalEvent::Failed(error) => panic!("{error}"),
                }
            }
        }
    });
    wait_until_quiet(dir, false);
}

/// Start and end offsets of each batch in a log file, found by walking batch headers.
fn batch_extents(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut extents = Vec::new();
    let mut offset = format::FILE_HEADER_BYTES;
    while offset + format::BATCH_HEADER_BYTES <= bytes.len()
        && &bytes[offset..offset + 8] == b"DTXBATCH"
    {
        let length = u32::from_le_bytes(bytes[offset + 12..offset + 16].try_into().unwrap());
        let end = offset + format::batch_extent_bytes(u64::from(length)) as usize;
        extents.push((offset, end));
        offset = align_up(end as u64) as usize;
    }
    extents
}

fn segment_with_records(dir: &Path) -> PathBuf {
    let listing = list_without_cleanup(dir).unwrap();
    listing
        .segments
        .iter()
        .map(|number| dir.join(segment_name(*number)))
        .find(|path| !batch_extents(&fs::read(path).unwrap()).is_empty())
        .unwrap()
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 0x10;
    fs::write(path, &bytes).unwrap();
}

/// Every file in `dir` with its contents.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let bytes = fs::read(entry.path()).unwrap();
            (entry.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// A batch of records (several sectors long) for the sequence after `count` batches.
fn encoded_batch_after(count: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    for round in 0..300 {
        encode_record(
            &Record::LeaderRound {
                round: 1_000 + round,
            },
            &mut payload,
        )
        .unwrap();
    }
    let mut framed = Vec::new();
    encode_batch(count + 1, &payload, &mut framed).unwrap();
    assert!(framed.len() > 3 * format::SECTOR_BYTES, "{}", framed.len());
    framed
}

/// Ten batches in one segment; returns the segment, where the next batch would start, and
/// the records.
fn ten_batches(dir: &Path) -> (PathBuf, u64, Vec<Record>) {
    let batches = sample_batches(10);
    append_one_batch_each(dir, &batches);
    let path = segment_with_records(dir);
    let extents = batch_extents(&fs::read(&path).unwrap());
    assert_eq!(extents.len(), 10);
    let next = align_up(extents[9].1 as u64);
    (path, next, batches.into_iter().flatten().collect())
}

fn file_bytes(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// A byte flipped in the middle of the newest segment, with 30 batches after it: the
/// acknowledged records after it must not be cut (issue 11: "record 31 of 61" cut 1 MB).
#[test]
fn flipped_byte_mid_newest_segment_refuses_to_open_and_flipping_it_back_recovers_everything() {
    let dir = temporary_dir("flip-middle");
    let batches = sample_batches(61);
    append_one_batch_each(&dir, &batches);
    let path = segment_with_records(&dir);
    let extents = batch_extents(&fs::read(&path).unwrap());
    assert_eq!(extents.len(), 61);
    let (start, end) = extents[30];
    let flipped = (start + format::BATCH_HEADER_BYTES + end) / 2;
    flip_byte(&path, flipped);
    let before = snapshot(&dir);
    let error = open_error(options(&dir));
    match &error {
        WalOpenError::Corrupt {
            file,
            offset_bytes,
            damage,
            reason,
            ..
        } => {
            assert_eq!(file, &path);
            assert_eq!(*offset_bytes, start as u64);
            assert_eq!(*damage, Damage::PayloadChecksum);
            assert!(
                matches!(
                    reason,
                    CorruptionReason::FollowedByValidBatch { sequence: 32, .. }
                ),
                "{reason:?}"
            );
        }
        other => panic!("{other}"),
    }
    // The operator's message names the file, the offset and the command to run.
    let reason = CorruptionReason::FollowedByValidBatch {
        offset_bytes: extents[31].0 as u64,
        sequence: 32,
    };
    assert_eq!(
        error.to_string(),
        format!(
            "corrupt log file {} at byte {start}: {} ({reason}); refusing to start rather \
             than lose acknowledged data; run: dtx wal verify {}",
            path.display(),
            Damage::PayloadChecksum,
            dir.display()
        )
    );
    assert_eq!(before, snapshot(&dir), "a refused open changes nothing");
    flip_byte(&path, flipped);
    let (_wal, recovered, _events) = open(options(&dir));
    let expected: Vec<Record> = batches.into_iter().flatten().collect();
    assert_eq!(recovered.records, expected);
    assert!(recovered.tail_problem.is_none());
    assert_eq!(recovered.cut_bytes, 0);
    let _ = fs::remove_dir_all(&dir);
}

/// The last batch was written completely (no unwritten sector, within the file): a flip in
/// it is damage after the fact, not a crash, and it was acknowledged.
#[test]
fn flipped_byte_in_the_last_batch_of_the_newest_segment_refuses_to_open() {
    let dir = temporary_dir("flip-last");
    let (path, _, _) = ten_batches(&dir);
    let (start, end) = batch_extents(&fs::read(&path).unwrap())[9];
    flip_byte(&path, end - 1);
    let error = open_error(options(&dir));
    assert!(
        matches!(
            &error,
            WalOpenError::Corrupt {
                offset_bytes,
                reason: CorruptionReason::CompletelyWritten,
                ..
            } if *offset_bytes == start as u64
        ),
        "{error}"
    );
    assert!(
        matches!(
            &error,
            WalOpenError::Corrupt {
                damage: Damage::PayloadChecksum
                    | Damage::BatchHeaderChecksum
                    | Damage::FileHeaderChecksum,
                ..
            }
        ),
        "{error}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// A record whose bytes hold whole sectors of zeros is still completely written: every
/// batch sector carries a stamp, so zeros in the records cannot pass for unwritten
/// sectors and make a damaged acknowledged batch look torn.
#[test]
fn zero_filled_record_bytes_never_pass_for_an_unwritten_sector() {
    let dir = temporary_dir("zero-value");
    let rows = vec![(
        dtx_protocol::Key::new("zeros"),
        Value::new(vec![0u8; 4 * format::SECTOR_BYTES]),
        dtx_protocol::Version(1),
    )];
    let batches = vec![
        vec![Record::LeaderRound { round: 1 }],
        vec![Record::Snapshot {
            commit_sequence: 1,
            rows,
        }],
    ];
    append_one_batch_each(&dir, &batches);
    let path = segment_with_records(&dir);
    let (start, _) = batch_extents(&fs::read(&path).unwrap())[1];
    flip_byte(&path, start + format::BATCH_HEADER_BYTES + 4);
    let error = open_error(options(&dir));
    assert!(
        matches!(
            &error,
            WalOpenError::Corrupt {
                reason: CorruptionReason::CompletelyWritten,
                ..
            }
        ),
        "{error}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Opens a log whose last batch is torn: it is cut, the ten earlier batches survive, and
/// the cut is durable.
fn assert_cut(dir: &Path, path: &Path, next: u64, records: &[Record], expected: TailProblem) {
    let length = file_bytes(path);
    let (wal, recovered, _events) = open(options(dir));
    drop(wal);
    assert_eq!(recovered.records, records);
    assert_eq!(recovered.tail_problem, Some(expected));
    assert_eq!(recovered.cut_bytes, length - next);
    assert_eq!(recovered.cut_file.as_deref(), Some(path));
    assert_eq!(recovered.next_sequence, 11);
    assert_eq!(file_bytes(path), next);
    wait_until_quiet(dir, false);
    let (_wal, again, _events) = open(options(dir));
    assert_eq!(again.records, records);
    assert!(again.tail_problem.is_none(), "the cut is durable");
}

/// A crash mid-write: the batch's first sector reached the file, the rest did not (still
/// the preallocated zeros).
#[test]
fn torn_last_batch_with_unwritten_sectors_is_cut_and_earlier_records_survive() {
    let dir = temporary_dir("torn-sectors");
    let (path, next, records) = ten_batches(&dir);
    let framed = encoded_batch_after(10);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&framed[..format::SECTOR_BYTES], next)
        .unwrap();
    drop(file);
    let expected = TailProblem::UnwrittenSector {
        offset_bytes: next,
        sector_offset_bytes: next + format::SECTOR_BYTES as u64,
    };
    assert_cut(&dir, &path, next, &records, expected);
    let _ = fs::remove_dir_all(&dir);
}

/// A power loss that kept the batch's later sectors but not its header sector (a hole).
#[test]
fn torn_last_batch_with_an_unwritten_header_sector_is_cut_and_earlier_records_survive() {
    let dir = temporary_dir("torn-hole");
    let (path, next, records) = ten_batches(&dir);
    let framed = encoded_batch_after(10);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(
        &framed[format::SECTOR_BYTES..],
        next + format::SECTOR_BYTES as u64,
    )
    .unwrap();
    drop(file);
    let expected = TailProblem::UnwrittenHeader { offset_bytes: next };
    assert_cut(&dir, &path, next, &records, expected);
    let _ = fs::remove_dir_all(&dir);
}

/// What the crash hook leaves: all but the last 3 bytes of a batch, and the file ends
/// there.
#[test]
fn torn_last_batch_past_the_end_of_the_file_is_cut_and_earlier_records_survive() {
    let dir = temporary_dir("torn-end");
    let (path, next, records) = ten_batches(&dir);
    let framed = encoded_batch_after(10);
    let kept = framed.len() - 3;
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&framed[..kept], next).unwrap();
    file.set_len(next + kept as u64).unwrap();
    drop(file);
    let expected = TailProblem::PastEndOfFile {
        offset_bytes: next,
        end_bytes: next + framed.len() as u64,
        file_bytes: next + kept as u64,
    };
    assert_cut(&dir, &path, next, &records, expected);
    let _ = fs::remove_dir_all(&dir);
}

/// A torn batch followed by a valid later batch was not the last write: corruption, even
/// though it has unwritten sectors.
#[test]
fn torn_looking_batch_followed_by_a_valid_batch_refuses_to_open() {
    let dir = temporary_dir("torn-then-valid");
    let (path, next, _) = ten_batches(&dir);
    let framed = encoded_batch_after(10);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&framed[..format::SECTOR_BYTES], next)
        .unwrap();
    let mut later = Vec::new();
    let mut payload = Vec::new();
    encode_record(&Record::LeaderRound { round: 9 }, &mut payload).unwrap();
    encode_batch(12, &payload, &mut later).unwrap();
    let later_offset = align_up(next + framed.len() as u64);
    file.write_all_at(&later, later_offset).unwrap();
    drop(file);
    let error = open_error(options(&dir));
    assert!(
        matches!(
            &error,
            WalOpenError::Corrupt {
                offset_bytes,
                reason: CorruptionReason::FollowedByValidBatch { offset_bytes: found, sequence: 12 },
                ..
            } if *offset_bytes == next && *found == later_offset
        ),
        "{error}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_batch_before_the_last_segment_refuses_to_open() {
    let dir = temporary_dir("corrupt-middle");
    // Two runs: two segments with records.
    for _ in 0..2 {
        runtime().block_on(async {
            let (wal, _, mut events) = open(options(&dir));
            append_all(&wal, &mut events, &sample_batches(5)).await;
        });
    }
    let path = segment_with_records(&dir);
    let (start, end) = batch_extents(&fs::read(&path).unwrap())[0];
    flip_byte(&path, end - 1);
    let error = open_error(options(&dir));
    assert!(
        matches!(
            &error,
            WalOpenError::Corrupt {
                offset_bytes,
                reason: CorruptionReason::NotTheLogTail,
                ..
            } if *offset_bytes == start as u64
        ),
        "{error}"
    );
    assert!(
        matches!(
            &error,
            WalOpenError::Corrupt {
                damage: Damage::PayloadChecksum
                    | Damage::BatchHeaderChecksum
                    | Damage::FileHeaderChecksum,
                ..
            }
        ),
        "{error}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Three runs: segment 1 (batches 1-5), 2 (6-10), 3 (empty). Without segment 2, segment 3
/// does not continue the log.
#[test]
fn missing_segment_refuses_to_open() {
    let dir = temporary_dir("missing-segment");
    for _ in 0..2 {
        append_one_batch_each(&dir, &sample_batches(5));
    }
    drop(open(options(&dir)));
    wait_until_quiet(&dir, false);
    fs::remove_file(dir.join(segment_name(2))).unwrap();
    let error = open_error(options(&dir));
    assert!(
        matches!(
            &error,
            WalOpenError::Corrupt {
                damage: Damage::SequenceGap {
                    expected: 6,
                    found: 11
                },
                ..
            }
        ),
        "{error}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Rewrites the header of `path` through `change`.
fn rewrite_header(path: &Path, kind: FileKind, change: impl FnOnce(&mut FileHeader)) {
    let mut bytes = fs::read(path).unwrap();
    let mut header = FileHeader::decode(&bytes, kind).unwrap();
    change(&mut header);
    bytes[..format::FILE_HEADER_BYTES].copy_from_slice(&header.encode().unwrap());
    fs::write(path, &bytes).unwrap();
}

#[test]
fn segment_of_another_node_or_cluster_or_renamed_is_refused() {
    let dir = temporary_dir("foreign");
    append_one_batch_each(&dir, &sample_batches(3));
    let path = segment_with_records(&dir);
    let error = open_error(WalOptions::new(&dir, CLUSTER_ID, 2));
    assert!(
        matches!(
            &error,
            WalOpenError::Foreign {
                damage: Damage::ForeignNode {
                    expected: 2,
                    found: NODE_ID
                },
                file,
                ..
            } if *file == path
        ),
        "{error}"
    );
    let error = open_error(WalOptions::new(&dir, "another-cluster", NODE_ID));
    assert!(
        matches!(
            &error,
            WalOpenError::Foreign {
                damage: Damage::ForeignCluster { .. },
                ..
            }
        ),
        "{error}"
    );
    // A segment copied in from another node's log (its header names that node).
    rewrite_header(&path, FileKind::Segment, |header| header.node_id = 9);
    let error = open_error(options(&dir));
    assert!(
        matches!(
            &error,
            WalOpenError::Foreign {
                damage: Damage::ForeignNode { found: 9, .. },
                ..
            }
        ),
        "{error}"
    );
    rewrite_header(&path, FileKind::Segment, |header| header.node_id = NODE_ID);
    let renamed = dir.join(segment_name(7));
    fs::rename(&path, &renamed).unwrap();
    let error = open_error(options(&dir));
    assert!(
        matches!(
            &error,
            WalOpenError::Foreign {
                damage: Damage::Renamed {
                    name_number: 7,
                    header_number: 1
                },
                ..
            }
        ),
        "{error}"
    );
    fs::rename(&renamed, &path).unwrap();
    let (_wal, recovered, _events) = open(options(&dir));
    assert_eq!(recovered.records.len(), 3);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn log_of_an_older_format_version_is_refused_and_left_untouched() {
    // Format 1 held CBOR records; this build reads postcard records (format 2). A node of
    // this build must refuse such a log whole (never cut it as a torn tail, never misread
    // it) and say which version it found.
    let dir = temporary_dir("old-format");
    append_one_batch_each(&dir, &sample_batches(3));
    let path = segment_with_records(&dir);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let checksum = crc32c::crc32c(&bytes[..format::FILE_HEADER_BYTES - 4]);
    bytes[format::FILE_HEADER_BYTES - 4..format::FILE_HEADER_BYTES]
        .copy_from_slice(&checksum.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let before = snapshot(&dir);
    let error = open_error(options(&dir));
    assert!(
        error
            .to_string()
            .contains("format version 1 (this build reads version 2)"),
        "{error}"
    );
    assert_eq!(snapshot(&dir), before, "a refused log must not be modified");
    bytes[8..12].copy_from_slice(&format::FORMAT_VERSION.to_le_bytes());
    let checksum = crc32c::crc32c(&bytes[..format::FILE_HEADER_BYTES - 4]);
    bytes[format::FILE_HEADER_BYTES - 4..format::FILE_HEADER_BYTES]
        .copy_from_slice(&checksum.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let (_wal, recovered, _events) = open(options(&dir));
    assert_eq!(recovered.records.len(), 3);
    let _ = fs::remove_dir_all(&dir);
}

/// Runs `verify` and checks that it changed nothing in the directory.
fn verify_unchanged(dir: &Path) -> verify::VerifyReport {
    let before = snapshot(dir);
    let report = verify::verify(dir).unwrap();
    assert_eq!(before, snapshot(dir), "verify changed the directory");
    // Both renderings work.
    assert!(report.to_string().contains("log directory"));
    assert!(serde_json::to_string(&report)
        .unwrap()
        .contains("\"files\""));
    report
}

fn tail_report(report: &verify::VerifyReport) -> &verify::FileReport {
    report
        .files
        .iter()
        .find(|file| file.role == verify::FileRole::LogTail)
        .unwrap()
}

#[test]
fn verify_classifies_each_problem_and_never_modifies_files() {
    // Torn tails (healthy: open would cut them), and a leftover .tmp that open would
    // remove but verify must not.
    for hole in [false, true] {
        let dir = temporary_dir(&format!("verify-torn-{hole}"));
        let (path, next, _) = ten_batches(&dir);
        let framed = encoded_batch_after(10);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        if hole {
            file.write_all_at(
                &framed[format::SECTOR_BYTES..],
                next + format::SECTOR_BYTES as u64,
            )
            .unwrap();
        } else {
            file.write_all_at(&framed[..format::SECTOR_BYTES], next)
                .unwrap();
        }
        fs::write(dir.join("checkpoint-0000000000000009.log.tmp"), b"half").unwrap();
        let report = verify_unchanged(&dir);
        assert!(report.is_healthy(), "{report}");
        assert_eq!(report.temporaries.len(), 1);
        let tail = tail_report(&report);
        assert_eq!(tail.records, 10);
        assert_eq!(tail.first_sequence, Some(1));
        assert_eq!(tail.last_sequence, Some(10));
        let problem = tail.problem.as_ref().unwrap();
        assert_eq!(problem.offset_bytes, next);
        let expected = if hole {
            TailProblem::UnwrittenHeader { offset_bytes: next }
        } else {
            TailProblem::UnwrittenSector {
                offset_bytes: next,
                sector_offset_bytes: next + format::SECTOR_BYTES as u64,
            }
        };
        assert_eq!(problem.classification, Classification::TornTail(expected));
        let _ = fs::remove_dir_all(&dir);
    }
    // A flip mid-segment and in the last batch: corruption.
    for last in [false, true] {
        let dir = temporary_dir(&format!("verify-flip-{last}"));
        let (path, _, _) = ten_batches(&dir);
        let (start, end) = batch_extents(&fs::read(&path).unwrap())[if last { 9 } else { 4 }];
        flip_byte(&path, end - 1);
        let report = verify_unchanged(&dir);
        assert!(!report.is_healthy(), "{report}");
        let tail = tail_report(&report);
        let problem = tail.problem.as_ref().unwrap();
        assert_eq!(problem.offset_bytes, start as u64);
        assert_eq!(problem.damage, Damage::PayloadChecksum);
        let reason = match &problem.classification {
            Classification::Corruption(reason) => reason.clone(),
            other => panic!("{other}"),
        };
        if last {
            assert_eq!(reason, CorruptionReason::CompletelyWritten);
        } else {
            assert!(
                matches!(
                    reason,
                    CorruptionReason::FollowedByValidBatch { sequence: 6, .. }
                ),
                "{reason:?}"
            );
        }
        assert!(report.to_string().contains("CORRUPT"), "{report}");
        let _ = fs::remove_dir_all(&dir);
    }
    // A second segment from another node, then the same one renamed.
    let dir = temporary_dir("verify-foreign");
    append_one_batch_each(&dir, &sample_batches(2));
    append_one_batch_each(&dir, &sample_batches(2));
    let second = dir.join(segment_name(2));
    rewrite_header(&second, FileKind::Segment, |header| header.node_id = 5);
    let report = verify_unchanged(&dir);
    assert!(!report.is_healthy(), "{report}");
    assert_eq!(report.node_id, Some(NODE_ID));
    let problem = report.files[1].problem.as_ref().unwrap();
    assert_eq!(
        problem.damage,
        Damage::ForeignNode {
            expected: NODE_ID,
            found: 5
        }
    );
    assert_eq!(
        problem.classification,
        Classification::Corruption(CorruptionReason::ForeignFile)
    );
    rewrite_header(&second, FileKind::Segment, |header| {
        header.node_id = NODE_ID
    });
    fs::rename(&second, dir.join(segment_name(8))).unwrap();
    let report = verify_unchanged(&dir);
    assert!(!report.is_healthy(), "{report}");
    assert!(matches!(
        report.files[1].problem.as_ref().unwrap().damage,
        Damage::Renamed {
            name_number: 8,
            header_number: 2
        }
    ));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn verify_reports_a_healthy_log_with_its_sequence_ranges() {
    let dir = temporary_dir("verify-healthy");
    append_one_batch_each(&dir, &sample_batches(4));
    append_one_batch_each(&dir, &sample_batches(3));
    let report = verify_unchanged(&dir);
    assert!(report.is_healthy(), "{report}");
    assert_eq!(report.live_records(), 7);
    let ranges: Vec<(Option<u64>, Option<u64>)> = report
        .files
        .iter()
        .map(|file| (file.first_sequence, file.last_sequence))
        .collect();
    assert_eq!(ranges, vec![(Some(1), Some(4)), (Some(5), Some(7))]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn hexdump_marks_the_line_of_the_offset() {
    let bytes: Vec<u8> = (0u8..64).collect();
    let dump = verify::hexdump_bytes(&bytes, 512, 530);
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[1].starts_with('>') && lines[1].contains("528"),
        "{dump}"
    );
    assert!(lines[0].ends_with("(sector)"), "{dump}");
    let marked = lines.iter().filter(|line| line.starts_with('>')).count();
    assert_eq!(marked, 1, "{dump}");
}

/// Every payload length around the sector boundaries encodes to the extent the reader
/// computes and reads back as the same records.
#[test]
fn batches_round_trip_at_every_length_around_sector_boundaries() {
    let header = FileHeader {
        kind: FileKind::Segment,
        format_version: format::FORMAT_VERSION,
        cluster_id: CLUSTER_ID.to_string(),
        node_id: NODE_ID,
        number: 1,
        log_sequence: 1,
    };
    for value_bytes in (0..2_100).step_by(7) {
        let record = Record::Snapshot {
            commit_sequence: 1,
            rows: vec![(
                dtx_protocol::Key::new("k"),
                Value::new(vec![0xAB; value_bytes]),
                dtx_protocol::Version(1),
            )],
        };
        let mut payload = Vec::new();
        encode_record(&record, &mut payload).unwrap();
        let mut bytes = header.encode().unwrap().to_vec();
        encode_batch(1, &payload, &mut bytes).unwrap();
        assert_eq!(
            bytes.len() - format::FILE_HEADER_BYTES,
            format::batch_extent_bytes(payload.len() as u64) as usize
        );
        let scan = format::scan_file(
            &bytes,
            &Expectation {
                kind: FileKind::Segment,
                number: 1,
                cluster_id: CLUSTER_ID,
                node_id: NODE_ID,
                log_sequence: Some(1),
                log_tail: true,
            },
        );
        assert!(scan.finding.is_none(), "{value_bytes}: {:?}", scan.finding);
        assert_eq!(scan.records, vec![record]);
    }
}

/// The checkpoint trigger counts record bytes: 60 one-record batches take 60 sectors but
/// about 600 record bytes, far below the trigger.
#[test]
fn checkpoint_trigger_counts_record_bytes_not_padding() {
    let dir = temporary_dir("checkpoint-padding");
    let mut options = options(&dir);
    options.checkpoint_after_bytes = 8 * 1024;
    runtime().block_on(async {
        let (wal, _, mut events) = open(options.clone());
        for (index, records) in sample_batches(60).into_iter().enumerate() {
            let token = index as u64 + 1;
            wal.append(token, records).await.unwrap();
            loop {
                match events.recv().await.unwrap() {
                    WalEvent::Durable(durable) if durable >= token => break,
                    WalEvent::Durable(_) => {}
                    WalEvent::Failed(error) => panic!("{error}"),
                }
            }
        }
    });
    wait_until_quiet(&dir, false);
    let path = segment_with_records(&dir);
    let extents = batch_extents(&fs::read(&path).unwrap());
    assert_eq!(extents.len(), 60);
    assert!(align_up(extents[59].1 as u64) > options.checkpoint_after_bytes);
    let listing = list_without_cleanup(&dir).unwrap();
    assert!(listing.checkpoints.is_empty(), "{listing:?}");
    assert_eq!(listing.segments.len(), 1, "{listing:?}");
    let _ = fs::remove_dir_all(&dir);
}

/// Environment variable that makes [`crash_hook_leaves_a_provable_torn_tail`] the child
/// that crashes (its value: the log directory).
#[cfg(feature = "test-hooks")]
const CRASH_CHILD_ENV: &str = "DTX_WAL_TEST_CRASH_CHILD";

/// The crash-at-group-commit hook, in a child process that really aborts: the next open
/// finds a provable torn tail (the daemon's crash test relies on it) and keeps every
/// batch before it. The hook exists only with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[test]
fn crash_hook_leaves_a_provable_torn_tail() {
    if let Ok(dir) = std::env::var(CRASH_CHILD_ENV) {
        let mut options = options(Path::new(&dir));
        options.crash_at_group_commit = Some(6);
        runtime().block_on(async {
            let (wal, _, mut events) = open(options);
            for (index, records) in sample_batches(10).into_iter().enumerate() {
                let token = index as u64 + 1;
                wal.append(token, records).await.unwrap();
                while !matches!(events.recv().await.unwrap(), WalEvent::Durable(durable) if durable >= token) {}
            }
        });
        unreachable!("the hook aborts the process");
    }
    let dir = temporary_dir("crash-hook");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "wal::tests::crash_hook_leaves_a_provable_torn_tail",
            "--nocapture",
        ])
        .env(CRASH_CHILD_ENV, &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must crash");
    let (_wal, recovered, _events) = open(options(&dir));
    assert_eq!(recovered.records.len(), 5, "batches 1-5 were durable");
    assert!(
        matches!(
            recovered.tail_problem,
            Some(TailProblem::PastEndOfFile { .. })
        ),
        "{:?}",
        recovered.tail_problem
    );
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
    let mut options = options(&dir);
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
    let logs = generate_logs(8_000, 11);
    let (id, records) = logs.into_iter().next().unwrap();
    let mut options = options(&dir);
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
        let chunks = records.chunks(64).count();
        for (index, chunk) in records.chunks(64).enumerate() {
            if index + 1 == chunks {
                // A checkpoint is started by an append: let the one running finish (on a
                // loaded machine it lags many segments behind), so the last chunk starts
                // the one now owed, as the next transaction would in a node.
                wait_until_quiet(&dir, false);
            }
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
    let bound_bytes = 96 * 1024;
    assert!(
        final_directory_bytes < bound_bytes,
        "{:?}",
        directory_files(&dir)
    );
    // The history is several times the bound, so the bound says something (postcard
    // records, log format 2, are about 40 % of the CBOR ones: 8,000 transactions here).
    assert!(
        appended_bytes > 5 * bound_bytes,
        "appended {appended_bytes} bytes, directory holds {final_directory_bytes}: {:?}",
        directory_files(&dir)
    );
    // The peak depends on how far the background checkpoint lags behind the appends: on
    // a loaded 2-core machine, 80-195 KiB (the format before batches reached 185 KiB and
    // failed a 160 KiB bound); a quarter of the history is still far from it.
    assert!(
        largest_directory_bytes < 256 * 1024,
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
    let mut options = options(&dir);
    options.checkpoint_after_bytes = u64::MAX;
    options.segment_bytes_max = 2 * 1024;
    runtime().block_on(async {
        let (wal, _, mut events) = open(options.clone());
        append_all(&wal, &mut events, first_half).await;
    });
    // The writer may still be rolling to the next segment.
    wait_until_quiet(&dir, false);
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
        let mut options = options(&dir);
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
            let path = dir.join(checkpoint_name(*number));
            let records = read_sealed(&path, FileKind::Checkpoint, *number, CLUSTER_ID, NODE_ID);
            for record in records.unwrap() {
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
