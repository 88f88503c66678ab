//! An inventory service that hosts its own dtx data node (the embedded way): its stock
//! takes part in dtx transactions through [`Participant`], without any HTTP in between.
//!
//! The service is a try-confirm-cancel [`TccService`] wrapped in [`Tcc`], which keeps the
//! idempotency and anti-hanging bookkeeping in a durable journal; the service's own state
//! (stock, holds, sales) is a JSON file written atomically (temporary file, fsync, rename)
//! before each answer, so what it answered survives kill -9.
//!
//! It serves `call` operations on targets `NAME/ITEM` with the action `reserve` and
//! arguments `{"count": N}` (default 1), and refuses anything else.
//!
//! # Run it in a cluster
//! ```text
//! dtx init --nodes 3 --dir c                        # three key-value data nodes
//! dtx add-node --config c/cluster.toml --name inventory   # role = "service": owns inventory/...
//! for n in n1 n2 n3; do dtx node --config c/cluster.toml --name $n --data-dir c/$n & done
//! cargo run --release -p dtx-node --example embedded_participant -- \
//!     --config c/cluster.toml --name inventory --data-dir c/inventory --stock widget=3
//! DTX_CONFIG=c/cluster.toml dtx txn 'call inventory/widget reserve {"count": 2}' 'write orders/1 widgets'
//! ```
//! The third reservation of a widget is refused, and `dtx txn` prints the service's reason.
//! The node's write-ahead log is in `--data-dir`; the service's journal and state are in
//! `--service-dir` (default: the data directory's path with `.service` appended; give it
//! the same one at every start). Add `--insecure` for a cluster without users.toml.

use dtx_node::config::ClusterConfig;
use dtx_node::daemon::{run_with_participant, DaemonOptions};
use dtx_node::participant::tcc::{ReserveAnswer, Tcc, TccService};
use dtx_node::participant::{Participant, ParticipantError};
use dtx_protocol::{Operation, TxnId};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Items a service keeps at most (a bound on its state file).
const ITEMS_MAX: usize = 10_000;

/// Units one call may reserve at most.
const UNITS_PER_CALL_MAX: u64 = 1_000_000;

/// The service's durable state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Stock {
    /// Units free to reserve, by item.
    available: BTreeMap<String, u64>,
    /// Units held for a transaction (reserved, neither confirmed nor cancelled), by its
    /// id's text (JSON object keys are strings).
    held: BTreeMap<String, Vec<(String, u64)>>,
    /// Units sold, by item.
    sold: BTreeMap<String, u64>,
}

/// An inventory whose every change is durable in `path` before it is answered.
struct Inventory {
    path: PathBuf,
    stock: Mutex<Stock>,
}

impl Inventory {
    /// Opens the state in `path`, or starts it with `initial` stock.
    fn open(path: PathBuf, initial: BTreeMap<String, u64>) -> Result<Inventory, String> {
        let stock = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| format!("{}: {error}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Stock {
                available: initial,
                ..Stock::default()
            },
            Err(error) => return Err(format!("{}: {error}", path.display())),
        };
        let inventory = Inventory {
            path,
            stock: Mutex::new(stock.clone()),
        };
        inventory.save(&stock).map_err(|error| error.detail)?;
        Ok(inventory)
    }

    /// Writes `stock` atomically: a crash leaves the old state or the new one.
    fn save(&self, stock: &Stock) -> Result<(), ParticipantError> {
        let failed = |error: std::io::Error| ParticipantError::new(error.to_string());
        let text = serde_json::to_vec_pretty(stock)
            .map_err(|error| ParticipantError::new(error.to_string()))?;
        let temporary = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary).map_err(failed)?;
            file.write_all(&text).map_err(failed)?;
            file.sync_all().map_err(failed)?;
        }
        std::fs::rename(&temporary, &self.path).map_err(failed)?;
        if let Some(directory) = self.path.parent() {
            std::fs::File::open(directory)
                .and_then(|directory| directory.sync_all())
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Applies `change` to the stock and makes it durable, under one lock.
    fn change<T>(&self, change: impl FnOnce(&mut Stock) -> T) -> Result<T, ParticipantError> {
        let mut stock = self
            .stock
            .lock()
            .map_err(|_| ParticipantError::new("state lock poisoned"))?;
        let mut next = stock.clone();
        let answer = change(&mut next);
        self.save(&next)?;
        *stock = next;
        Ok(answer)
    }
}

/// What one operation asks: (item, units), or why it is refused.
fn wanted(operation: &Operation) -> Result<(String, u64), String> {
    let Operation::Call {
        target,
        action,
        args,
    } = operation
    else {
        return Err(format!(
            "the inventory serves only calls, not {operation:?}"
        ));
    };
    if action != "reserve" {
        return Err(format!("unknown action {action:?} (try reserve)"));
    }
    let item = target
        .as_str()
        .split_once('/')
        .map(|(_, item)| item.to_string())
        .filter(|item| !item.is_empty())
        .ok_or_else(|| format!("target {:?} names no item", target.as_str()))?;
    let args: serde_json::Value =
        serde_json::from_slice(&args.0).map_err(|error| format!("arguments: {error}"))?;
    let count = match args.get("count") {
        None => 1,
        Some(count) => count
            .as_u64()
            .filter(|count| (1..=UNITS_PER_CALL_MAX).contains(count))
            .ok_or_else(|| format!("count must be 1..={UNITS_PER_CALL_MAX}"))?,
    };
    Ok((item, count))
}

impl TccService for Inventory {
    fn reserve<'a>(
        &'a self,
        txn: TxnId,
        operations: &'a [Operation],
    ) -> BoxFuture<'a, Result<ReserveAnswer, ParticipantError>> {
        Box::pin(async move {
            let mut wanted_units = Vec::new();
            for operation in operations {
                match wanted(operation) {
                    Ok(want) => wanted_units.push(want),
                    Err(reason) => return Ok(ReserveAnswer::Refused { reason }),
                }
            }
            let answer = self.change(|stock| {
                if stock.held.contains_key(&txn.to_string()) {
                    // Reserved before a crash: idempotent by transaction.
                    return ReserveAnswer::Reserved;
                }
                for (item, count) in &wanted_units {
                    let left = stock.available.get(item).copied().unwrap_or(0);
                    let asked: u64 = wanted_units
                        .iter()
                        .filter(|(other, _)| other == item)
                        .map(|(_, count)| *count)
                        .sum();
                    if asked > left {
                        return ReserveAnswer::Refused {
                            reason: format!("only {left} {item} left, {count} asked"),
                        };
                    }
                }
                for (item, count) in &wanted_units {
                    if let Some(left) = stock.available.get_mut(item) {
                        *left -= count;
                    }
                }
                stock.held.insert(txn.to_string(), wanted_units.clone());
                ReserveAnswer::Reserved
            })?;
            println!("{txn}: reserve {wanted_units:?}: {answer:?}");
            Ok(answer)
        })
    }

    fn confirm(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
        Box::pin(async move {
            self.change(|stock| {
                for (item, count) in stock.held.remove(&txn.to_string()).unwrap_or_default() {
                    *stock.sold.entry(item).or_default() += count;
                }
            })?;
            println!("{txn}: confirmed");
            Ok(())
        })
    }

    fn cancel(&self, txn: TxnId) -> BoxFuture<'_, Result<(), ParticipantError>> {
        Box::pin(async move {
            self.change(|stock| {
                for (item, count) in stock.held.remove(&txn.to_string()).unwrap_or_default() {
                    *stock.available.entry(item).or_default() += count;
                }
            })?;
            println!("{txn}: cancelled");
            Ok(())
        })
    }
}

/// The command line: `--config PATH --name NAME --data-dir DIR [--service-dir DIR]
/// [--stock ITEM=N,...] [--insecure]`.
struct Arguments {
    config: PathBuf,
    name: String,
    data_dir: PathBuf,
    service_dir: Option<PathBuf>,
    stock: BTreeMap<String, u64>,
    insecure: bool,
}

fn parse_arguments() -> Result<Arguments, String> {
    let mut config = None;
    let mut name = None;
    let mut data_dir = None;
    let mut service_dir = None;
    let mut stock = BTreeMap::new();
    let mut insecure = false;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value = || {
            arguments
                .next()
                .ok_or_else(|| format!("{argument} needs a value"))
        };
        match argument.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--name" => name = Some(value()?),
            "--data-dir" => data_dir = Some(PathBuf::from(value()?)),
            "--service-dir" => service_dir = Some(PathBuf::from(value()?)),
            "--stock" => {
                for part in value()?.split(',').filter(|part| !part.is_empty()) {
                    let (item, count) = part
                        .split_once('=')
                        .and_then(|(item, count)| Some((item, count.parse().ok()?)))
                        .ok_or_else(|| format!("--stock is ITEM=COUNT,...: {part:?}"))?;
                    stock.insert(item.to_string(), count);
                }
            }
            "--insecure" => insecure = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if stock.len() > ITEMS_MAX {
        return Err(format!("at most {ITEMS_MAX} items"));
    }
    Ok(Arguments {
        config: config.ok_or("--config PATH is required")?,
        name: name.ok_or("--name NAME is required")?,
        data_dir: data_dir.ok_or("--data-dir DIR is required")?,
        service_dir,
        stock,
        insecure,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments = parse_arguments()?;
    let config = ClusterConfig::load(&arguments.config)?;
    // Apart from the node's data directory, which a `--reinit` would move aside.
    let service_dir = arguments.service_dir.clone().unwrap_or_else(|| {
        let mut path = arguments.data_dir.clone().into_os_string();
        path.push(".service");
        PathBuf::from(path)
    });
    std::fs::create_dir_all(&service_dir)?;
    let inventory = Inventory::open(service_dir.join("stock.json"), arguments.stock)?;
    let participant: Arc<dyn Participant> =
        Arc::new(Tcc::open(service_dir.join("journal"), inventory)?);
    let mut options = DaemonOptions::new(config, &arguments.name, arguments.data_dir.clone());
    options.config_path = Some(arguments.config);
    options.insecure = arguments.insecure;
    run_with_participant(options, Some(participant)).await?;
    Ok(())
}
