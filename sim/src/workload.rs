//! Workloads: what each simulated client asks for next, and what it checks on the answers.

use crate::checker::Violation;
use crate::config::WorkloadKind;
use dtx_protocol::{Key, Operation, ReadResult, Rng, TxnResult, Value, Version};
use std::collections::BTreeMap;

/// Starting balance of every bank account.
pub const BANK_INITIAL_BALANCE: i64 = 100;

/// Items each simulated service sells (`<service>/item-<i>`).
pub const SERVICE_ITEMS: usize = 2;

/// The most units one `reserve` call asks for.
pub const RESERVE_UNITS_MAX: u64 = 3;

/// What kind of step a transaction is, so its result can be interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Bank setup: write every account.
    Setup,
    /// Bank transfer, first half: read both balances.
    TransferRead {
        /// Debited account.
        from: Key,
        /// Credited account.
        to: Key,
    },
    /// Bank transfer, second half: validate versions, write both.
    TransferWrite,
    /// Bank audit: read every account.
    Audit,
    /// Register reads and writes.
    Register,
    /// Interactive transfer: read both balances, then write both.
    InteractiveTransfer {
        /// Debited account.
        from: Key,
        /// Credited account.
        to: Key,
        /// Amount asked for (capped by the balance read).
        amount: i64,
    },
    /// Interactive audit: read every account.
    InteractiveAudit,
    /// Contention: write these hot keys in this order.
    HotWrites {
        /// Keys with the values to write, in order.
        writes: Vec<(Key, Value)>,
    },
    /// Orders: writes and `reserve` calls on services.
    Order,
}

impl Step {
    /// True for steps that run interactively.
    pub fn is_interactive(&self) -> bool {
        matches!(
            self,
            Step::InteractiveTransfer { .. } | Step::InteractiveAudit | Step::HotWrites { .. }
        )
    }
}

/// A client's next transaction.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Its operations.
    pub operations: Vec<Operation>,
    /// What it is.
    pub step: Step,
}

/// A workload's state across all clients.
#[derive(Debug)]
pub struct Workload {
    kind: WorkloadKind,
    keys: Vec<Key>,
    follow_ups: BTreeMap<usize, Planned>,
    next_unique: u64,
    /// Problems the workload itself saw (e.g. an audit with the wrong total).
    pub violations: Vec<Violation>,
    /// Audits that committed with complete reads.
    pub audits_checked: u64,
    nodes: usize,
    accounting: bool,
    accounting_next: usize,
    /// Names of the service participants the orders workload calls.
    services: Vec<String>,
    /// The interactive transfer reads its accounts for update (exclusive locks).
    reads_for_update: bool,
}

impl Workload {
    /// The workload for a cluster of `nodes` data nodes.
    /// With `accounting`, every transaction instead writes one key on each of the first
    /// N service nodes, N cycling through 1..=nodes (for message accounting).
    pub fn new(kind: WorkloadKind, nodes: usize, accounting: bool) -> Workload {
        let keys = match kind {
            WorkloadKind::Bank | WorkloadKind::Transfer => (0..4 * nodes)
                .map(|index| Key::new(format!("acct-{index}")))
                .collect(),
            WorkloadKind::Register => (0..3 * nodes)
                .map(|index| Key::new(format!("r{index}")))
                .collect(),
            WorkloadKind::Contention => (0..nodes)
                .map(|index| Key::new(format!("hot-{index}")))
                .collect(),
            WorkloadKind::Orders => (0..3 * nodes)
                .map(|index| Key::new(format!("order-{index}")))
                .collect(),
        };
        Workload {
            kind,
            keys,
            follow_ups: BTreeMap::new(),
            next_unique: 1,
            violations: Vec::new(),
            audits_checked: 0,
            nodes,
            accounting,
            accounting_next: 0,
            services: Vec::new(),
            reads_for_update: false,
        }
    }

    /// Whether the interactive transfer reads its two accounts for update (exclusive
    /// locks, waits) rather than under shared locks (upgraded at commit, or refused).
    pub fn set_reads_for_update(&mut self, reads_for_update: bool) {
        self.reads_for_update = reads_for_update;
    }

    fn account_read(&self, key: &Key) -> Operation {
        if self.reads_for_update {
            Operation::ReadForUpdate { key: key.clone() }
        } else {
            Operation::Read {
                key: key.clone(),
                expected: None,
            }
        }
    }

    /// The service participants (member names) the orders workload calls.
    pub fn set_services(&mut self, names: Vec<String>) {
        self.services = names;
    }

    /// The workload's keys.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The money the bank must always hold.
    pub fn bank_total(&self) -> i64 {
        BANK_INITIAL_BALANCE * self.keys.len() as i64
    }

    /// The setup transaction to run before faults start, if any.
    pub fn setup(&self) -> Option<Planned> {
        if self.accounting {
            return None;
        }
        match self.kind {
            WorkloadKind::Bank | WorkloadKind::Transfer => Some(Planned {
                operations: self
                    .keys
                    .iter()
                    .map(|key| Operation::Write {
                        key: key.clone(),
                        value: balance_value(BANK_INITIAL_BALANCE),
                    })
                    .collect(),
                step: Step::Setup,
            }),
            WorkloadKind::Register | WorkloadKind::Contention | WorkloadKind::Orders => None,
        }
    }

    /// Uses `count` keys instead of the default per node (fewer: more conflicts): the hot
    /// keys of the contention workload, the registers of register, the accounts of bank
    /// and transfer (the lab sets its scenario's `keys`). 0 (or fewer than 2 accounts)
    /// keeps the default.
    pub fn set_hot_keys(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        match self.kind {
            WorkloadKind::Contention => {
                self.keys = (0..count)
                    .map(|index| Key::new(format!("hot-{index}")))
                    .collect();
            }
            WorkloadKind::Register => {
                self.keys = (0..count)
                    .map(|index| Key::new(format!("r{index}")))
                    .collect();
            }
            WorkloadKind::Bank | WorkloadKind::Transfer if count >= 2 => {
                self.keys = (0..count)
                    .map(|index| Key::new(format!("acct-{index}")))
                    .collect();
            }
            _ => {}
        }
    }

    /// The next operation of an interactive step, given those done and the reads so far;
    /// `None`: commit now.
    pub fn next_operation(
        &self,
        step: &Step,
        done: usize,
        reads: &[ReadResult],
    ) -> Option<Operation> {
        match step {
            Step::InteractiveTransfer { from, to, amount } => match done {
                0 => Some(self.account_read(from)),
                1 => Some(self.account_read(to)),
                2 | 3 => {
                    let debit = find(reads, from)?.value.as_ref().and_then(parse_balance)?;
                    let credit = find(reads, to)?.value.as_ref().and_then(parse_balance)?;
                    let amount = (*amount).min(debit);
                    if amount <= 0 {
                        return None;
                    }
                    if done == 2 {
                        Some(Operation::Write {
                            key: from.clone(),
                            value: balance_value(debit - amount),
                        })
                    } else {
                        Some(Operation::Write {
                            key: to.clone(),
                            value: balance_value(credit + amount),
                        })
                    }
                }
                _ => None,
            },
            Step::InteractiveAudit => self.keys.get(done).map(|key| Operation::Read {
                key: key.clone(),
                expected: None,
            }),
            Step::HotWrites { writes } => writes.get(done).map(|(key, value)| Operation::Write {
                key: key.clone(),
                value: value.clone(),
            }),
            _ => None,
        }
    }

    /// True if `client` has a follow-up step queued (it is mid-transfer).
    pub fn has_follow_up(&self, client: usize) -> bool {
        self.follow_ups.contains_key(&client)
    }

    /// Forgets a client's follow-up (it crashed).
    pub fn drop_follow_up(&mut self, client: usize) {
        self.follow_ups.remove(&client);
    }

    /// The next transaction for `client`.
    pub fn next(&mut self, client: usize, rng: &mut Rng) -> Planned {
        if let Some(planned) = self.follow_ups.remove(&client) {
            return planned;
        }
        if self.accounting {
            let participants = 1 + self.accounting_next % self.nodes;
            self.accounting_next += 1;
            let operations = (1..=participants)
                .map(|node| Operation::Write {
                    key: Key::new(format!("n{node}/x")),
                    value: Value::new(b"1".to_vec()),
                })
                .collect();
            return Planned {
                operations,
                step: Step::Register,
            };
        }
        match self.kind {
            WorkloadKind::Bank => self.next_bank(rng),
            WorkloadKind::Register => self.next_register(client, rng),
            WorkloadKind::Transfer => self.next_transfer(rng),
            WorkloadKind::Contention => self.next_contention(client, rng),
            WorkloadKind::Orders => self.next_order(client, rng),
        }
    }

    /// One or two unique writes, then `reserve` on an item of one or two services.
    fn next_order(&mut self, client: usize, rng: &mut Rng) -> Planned {
        let mut keys = self.keys.clone();
        rng.shuffle(&mut keys);
        let writes = rng.between(1, 2) as usize;
        let mut operations: Vec<Operation> = keys
            .into_iter()
            .take(writes)
            .map(|key| {
                let unique = self.next_unique;
                self.next_unique += 1;
                Operation::Write {
                    key,
                    value: Value::new(format!("c{client}-{unique}").into_bytes()),
                }
            })
            .collect();
        let mut services = self.services.clone();
        rng.shuffle(&mut services);
        let calls = rng.between(1, 2) as usize;
        for service in services.into_iter().take(calls) {
            let item = rng.below(SERVICE_ITEMS as u64);
            let units = rng.between(1, RESERVE_UNITS_MAX);
            operations.push(Operation::Call {
                target: Key::new(format!("{service}/item-{item}")),
                action: "reserve".to_string(),
                args: Value::new(format!("{{\"units\":{units}}}").into_bytes()),
            });
        }
        Planned {
            operations,
            step: Step::Order,
        }
    }

    fn next_transfer(&mut self, rng: &mut Rng) -> Planned {
        if rng.chance(0.08) {
            return Planned {
                operations: Vec::new(),
                step: Step::InteractiveAudit,
            };
        }
        let from = rng.below(self.keys.len() as u64) as usize;
        let offset = 1 + rng.below(self.keys.len() as u64 - 1) as usize;
        let to = (from + offset) % self.keys.len();
        Planned {
            operations: Vec::new(),
            step: Step::InteractiveTransfer {
                from: self.keys[from].clone(),
                to: self.keys[to].clone(),
                amount: rng.between(1, 20) as i64,
            },
        }
    }

    fn next_contention(&mut self, client: usize, rng: &mut Rng) -> Planned {
        let count = rng.between(2, 3.min(self.keys.len() as u64).max(2)) as usize;
        let mut keys = self.keys.clone();
        rng.shuffle(&mut keys);
        let writes = keys
            .into_iter()
            .take(count)
            .map(|key| {
                let unique = self.next_unique;
                self.next_unique += 1;
                (key, Value::new(format!("c{client}-{unique}").into_bytes()))
            })
            .collect();
        Planned {
            operations: Vec::new(),
            step: Step::HotWrites { writes },
        }
    }

    fn next_bank(&mut self, rng: &mut Rng) -> Planned {
        if rng.chance(0.08) {
            return Planned {
                operations: self
                    .keys
                    .iter()
                    .map(|key| Operation::Read {
                        key: key.clone(),
                        expected: None,
                    })
                    .collect(),
                step: Step::Audit,
            };
        }
        let from = rng.below(self.keys.len() as u64) as usize;
        let offset = 1 + rng.below(self.keys.len() as u64 - 1) as usize;
        let to = (from + offset) % self.keys.len();
        let (from, to) = (self.keys[from].clone(), self.keys[to].clone());
        Planned {
            operations: vec![
                Operation::Read {
                    key: from.clone(),
                    expected: None,
                },
                Operation::Read {
                    key: to.clone(),
                    expected: None,
                },
            ],
            step: Step::TransferRead { from, to },
        }
    }

    fn next_register(&mut self, client: usize, rng: &mut Rng) -> Planned {
        let count = rng.between(1, 4) as usize;
        let mut keys = self.keys.clone();
        rng.shuffle(&mut keys);
        let operations = keys
            .into_iter()
            .take(count)
            .map(|key| {
                if rng.chance(0.5) {
                    Operation::Read {
                        key,
                        expected: None,
                    }
                } else {
                    let unique = self.next_unique;
                    self.next_unique += 1;
                    Operation::Write {
                        key,
                        value: Value::new(format!("c{client}-{unique}").into_bytes()),
                    }
                }
            })
            .collect();
        Planned {
            operations,
            step: Step::Register,
        }
    }

    /// Takes note of a finished transaction; may queue the client's follow-up step.
    pub fn on_finished(&mut self, client: usize, step: &Step, result: &TxnResult, rng: &mut Rng) {
        let TxnResult::Committed {
            reads,
            reads_lost: false,
        } = result
        else {
            return;
        };
        match step {
            Step::TransferRead { from, to } => {
                let (Some(debit), Some(credit)) = (find(reads, from), find(reads, to)) else {
                    self.violations.push(Violation::TransferReadIncomplete {
                        from: from.clone(),
                        to: to.clone(),
                    });
                    return;
                };
                let (Some(debit_balance), Some(credit_balance)) =
                    (self.balance(debit), self.balance(credit))
                else {
                    return;
                };
                if debit_balance <= 0 {
                    return;
                }
                let amount = rng.between(1, debit_balance.min(20) as u64) as i64;
                self.follow_ups.insert(
                    client,
                    Planned {
                        operations: transfer_write(
                            from,
                            debit.version,
                            debit_balance - amount,
                            to,
                            credit.version,
                            credit_balance + amount,
                        ),
                        step: Step::TransferWrite,
                    },
                );
            }
            Step::Audit | Step::InteractiveAudit => {
                let mut total = 0;
                for key in self.keys.clone() {
                    let Some(read) = find(reads, &key) else {
                        self.violations.push(Violation::AuditReadMissing { key });
                        return;
                    };
                    match self.balance(read) {
                        Some(balance) => total += balance,
                        None => return,
                    }
                }
                self.audits_checked += 1;
                if total != self.bank_total() {
                    self.violations.push(Violation::AuditTotal {
                        total,
                        expected: self.bank_total(),
                    });
                }
            }
            Step::Setup
            | Step::TransferWrite
            | Step::Register
            | Step::InteractiveTransfer { .. }
            | Step::HotWrites { .. }
            | Step::Order => {}
        }
    }

    fn balance(&mut self, read: &ReadResult) -> Option<i64> {
        match read.value.as_ref().and_then(parse_balance) {
            Some(balance) => Some(balance),
            None => {
                self.violations.push(Violation::NotABalance {
                    key: read.key.clone(),
                    value: read.value.clone(),
                });
                None
            }
        }
    }
}

fn transfer_write(
    from: &Key,
    from_version: Version,
    from_balance: i64,
    to: &Key,
    to_version: Version,
    to_balance: i64,
) -> Vec<Operation> {
    vec![
        Operation::Read {
            key: from.clone(),
            expected: Some(from_version),
        },
        Operation::Read {
            key: to.clone(),
            expected: Some(to_version),
        },
        Operation::Write {
            key: from.clone(),
            value: balance_value(from_balance),
        },
        Operation::Write {
            key: to.clone(),
            value: balance_value(to_balance),
        },
    ]
}

fn find<'a>(reads: &'a [ReadResult], key: &Key) -> Option<&'a ReadResult> {
    reads.iter().find(|read| &read.key == key)
}

/// A balance as a value (decimal text, readable in `dtx get`).
pub fn balance_value(balance: i64) -> Value {
    Value::new(balance.to_string().into_bytes())
}

/// Parses a balance value.
pub fn parse_balance(value: &Value) -> Option<i64> {
    value.as_text()?.parse().ok()
}
