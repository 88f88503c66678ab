#!/usr/bin/env bash
# The WHITEPAPER's node benchmark: 3 data nodes on 127.0.0.1, F=1, fsync on, transactions
# touching 2 nodes, closed-loop `dtx bench` at each client count, then (with --postgres) the
# PostgreSQL 2PC baseline from shared/peers/pg2pc.sh in the same run (bank transfers over 3
# instances, at the same client counts). Prints one table: clients, tps, p50, p99 and the
# costs per committed transaction (CPU of every node and of the bench client, messages the
# nodes sent, fsyncs), which `dtx bench --json` reads from the nodes' /metrics.
# Usage: [TRANSPORT=stream|request-response] [WORKLOADS="bank register"] [CLIENTS="1 8 32"] \
#        [RUNS=1] [DTX=path/to/dtx] [RESULTS=file.jsonl] [PLOT=file.svg] \
#        node/scripts/bench-3-nodes.sh [SECONDS=15] [--postgres]
# RUNS > 1 repeats each (workload, clients) point, alternating, and prints every run plus the
# median of each column. DTX skips the build; RESULTS keeps the raw JSON lines; PLOT draws
# throughput, p50 latency and CPU per transaction against clients (`dtx bench-plot`).
set -euo pipefail
seconds=${1:-15}
postgres=${2:-}
transport=${TRANSPORT:-stream}
workloads=${WORKLOADS:-bank register}
client_counts=${CLIENTS:-1 8 32}
runs=${RUNS:-1}
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${DTX:-}" ]; then
  cargo build --release -p dtx-cli --quiet --manifest-path "$here/Cargo.toml"
  DTX="${CARGO_TARGET_DIR:-$here/target}/release/dtx"
fi
dtx=$DTX
dir=$(mktemp -d /tmp/dtx-bench-XXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
"$dtx" init --nodes 3 --f 1 --dir "$dir" >/dev/null
for name in n1 n2 n3; do
  RUST_LOG=warn "$dtx" node --config "$dir/cluster.toml" --name $name --data-dir "$dir/$name" --transport "$transport" >"$dir/$name.out" 2>&1 &
  pids+=($!)
done
sleep 2
results=$dir/results.jsonl
for run in $(seq 1 "$runs"); do
  for workload in $workloads; do
    for clients in $client_counts; do
      line=$("$dtx" bench --config "$dir/cluster.toml" --workload "$workload" --clients "$clients" \
        --duration "${seconds}s" --transport "$transport" --json | tail -1)
      echo "{\"system\":\"dtx\",\"run\":$run,\"report\":$line}" >>"$results"
      echo "dtx run $run: $line" >&2
    done
  done
done
if [ "$postgres" = "--postgres" ]; then
  pg2pc=${PG2PC:-$here/../shared/peers/pg2pc.sh}
  for run in $(seq 1 "$runs"); do
    for clients in $client_counts; do
      line=$(bash "$pg2pc" "$clients" "$seconds" | tail -1)
      echo "pg2pc run $run: $line" >&2
      python3 -c 'import json,sys; print(json.dumps({"system":"pg2pc","run":int(sys.argv[1]),"line":sys.argv[2]}))' \
        "$run" "$line" >>"$results"
    done
  done
fi
[ -z "${RESULTS:-}" ] || cp "$results" "$RESULTS"
[ -z "${PLOT:-}" ] || "$dtx" bench-plot "$results" --out "$PLOT" >&2
python3 - "$results" "$runs" <<'EOF'
import json, re, statistics, sys
rows = {}
for text in open(sys.argv[1]):
    entry = json.loads(text)
    if entry["system"] == "dtx":
        report = entry["report"]
        key = ("dtx", report["workload"], report["clients"])
        values = [report["tps"], report["p50_ms"], report["p99_ms"], report.get("cpu_us_per_txn"),
                  report.get("msgs_per_txn"), report.get("fsyncs_per_txn"), report.get("msgs_per_write")]
    else:
        fields = dict(re.findall(r"(\w+)=([^\s]+)", entry["line"]))
        number = lambda name: float(fields[name].rstrip("ms")) if name in fields else None
        key = ("pg2pc", "bank", int(fields.get("clients", 0)))
        values = [number("tps"), number("p50"), number("p99"), None, None, None, None]
    rows.setdefault(key, []).append(values)
columns = ["system", "workload", "clients", "tps", "p50_ms", "p99_ms", "cpu_us_per_txn", "msgs_per_txn", "fsyncs_per_txn", "msgs_per_write"]
digits = [0, 2, 2, 0, 2, 3, 2]
def show(value, places):
    return "-" if value is None else f"{value:.{places}f}"
def median(samples):
    known = [sample for sample in samples if sample is not None]
    return statistics.median(known) if known else None
print("".join(f"{name:>16}" for name in columns))
for (system, workload, clients), runs in sorted(rows.items(), key=lambda item: (item[0][0] != "dtx", item[0][1], item[0][2])):
    shown = runs if len(runs) == 1 else runs + [[median(column) for column in zip(*runs)]]
    for index, values in enumerate(shown):
        label = system if len(runs) == 1 else (f"{system} median" if index == len(runs) else f"{system} run {index + 1}")
        cells = [label, workload, str(clients)] + [show(value, places) for value, places in zip(values, digits)]
        print("".join(f"{cell:>16}" for cell in cells))
EOF
