//! Prints what a fuzz input holds, for triage of a crash: the records of a log
//! (`record_log_replay` inputs) or the messages of a frame (`frame_decode`,
//! `message_handle` and `heartbeat_decode` inputs), in `Debug` form.
//!
//! Run from `fuzz/`: `cargo run --release --example explain -- log|frame FILE`.

use dtx_protocol::{decode, decode_log};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [kind, path] = arguments.as_slice() else {
        return Err("usage: explain log|frame FILE".into());
    };
    let bytes = std::fs::read(path)?;
    match kind.as_str() {
        "log" => {
            let contents = decode_log(&bytes);
            for (index, record) in contents.records.iter().enumerate() {
                println!("record {index}: {record:?}");
            }
            println!(
                "valid prefix {} of {} bytes; tail: {}",
                contents.valid_length_bytes,
                bytes.len(),
                contents
                    .tail_problem
                    .map_or_else(|| "none".to_string(), |problem| problem.to_string())
            );
        }
        "frame" => match decode(&bytes) {
            Ok(messages) => {
                for (index, message) in messages.iter().enumerate() {
                    println!("message {index}: {message:?}");
                }
            }
            Err(error) => println!("does not decode: {error}"),
        },
        other => return Err(format!("unknown kind {other:?}: log or frame").into()),
    }
    Ok(())
}
