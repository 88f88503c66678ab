#!/usr/bin/env bash
# The shop's benchmark, three rows from one run with the same number of closed-loop clients:
#   (a) the shop: orders through dtx to three PostgreSQL participants (inventory, payment,
#       shipping; 3 databases on 2 instances, fsync on), no faults (shop --bench);
#   (b) PostgreSQL-native 2PC: ../shared/peers/pg2pc.sh, the client as coordinator over 3
#       instances (PREPARE TRANSACTION / COMMIT PREPARED, transfers touching 2 of them);
#   (c) dtx's own store: `dtx bench --workload orders` on a local 3-node cluster (stock,
#       balance and shipment keys of one order, spread over the nodes).
# Usage: bash examples/shop/bench.sh [CLIENTS=8] [SECONDS=15]   (loopback only)
set -euo pipefail
clients=${1:-8}
seconds=${2:-15}
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
shared="$root/../shared"
if [ ! -f "$shared/peers/pg2pc.sh" ]; then
    echo "bench: no $shared/peers/pg2pc.sh (the PostgreSQL-native 2PC baseline)" >&2
    exit 2
fi
cd "$root"
cargo build --release -p dtx-cli --bin dtx --example shop
target="${CARGO_TARGET_DIR:-$root/target}"
dtx="$target/release/dtx"
work=$(mktemp -d /tmp/dtx-shop-bench-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== (a) shop: dtx + PostgreSQL participants, $clients clients, ${seconds}s" >&2
"$target/release/examples/shop" --bench --workers "$clients" --seconds "$seconds" --dtx "$dtx" \
    | tail -1 >"$work/shop.json"
cat "$work/shop.json" >&2

echo "== (b) PostgreSQL-native 2PC (pg2pc.sh), $clients clients, ${seconds}s" >&2
bash "$shared/peers/pg2pc.sh" "$clients" "$seconds" | tail -1 >"$work/pg2pc.txt"
cat "$work/pg2pc.txt" >&2

echo "== (c) dtx built-in store: dtx bench --workload orders, 3 nodes, $clients clients, ${seconds}s" >&2
"$dtx" init --dir "$work/cluster" --nodes 3 >/dev/null
for name in n1 n2 n3; do
    RUST_LOG=warn "$dtx" node --config "$work/cluster/cluster.toml" --name "$name" \
        --data-dir "$work/cluster/$name" >"$work/$name.out" 2>"$work/$name.log" </dev/null &
    pids+=($!)
    disown  # killed at the end on purpose: no "Killed" notice from the shell
done
for attempt in $(seq 1 300); do
    ready=$(cat "$work"/n?.out 2>/dev/null | grep -c " ready:" || true)
    [ "$ready" = 3 ] && break
    sleep 0.1
done
if [ "$ready" != 3 ]; then
    echo "bench: the 3 dtx nodes did not become ready (logs in $work)" >&2
    trap - EXIT
    exit 2
fi
"$dtx" bench --config "$work/cluster/cluster.toml" --workload orders --clients "$clients" \
    --duration "${seconds}s" --json | tail -1 >"$work/store.json"
cat "$work/store.json" >&2

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$work" "$clients" "$seconds" "$load_before" "$load_after" <<'PY'
import json, re, sys
work, clients, seconds, load_before, load_after = sys.argv[1:6]
shop = json.load(open(f"{work}/shop.json"))
text = open(f"{work}/pg2pc.txt").read()
field = lambda name: float(re.search(rf"\b{name}=([0-9.]+)", text).group(1))
pg = {"rate": field("tps"), "p50": field("p50"), "p99": field("p99")}
store = json.load(open(f"{work}/store.json"))
rows = [
    ("shop: dtx + 3 PostgreSQL participants", "orders",
     {"rate": shop["orders_per_s"], "p50": shop["p50_ms"], "p99": shop["p99_ms"]}),
    ("PostgreSQL-native 2PC (pg2pc.sh)", "transfers", pg),
    ("dtx built-in store (dtx bench orders)", "orders",
     {"rate": store["tps"], "p50": store["p50_ms"], "p99": store["p99_ms"]}),
]
print(f"\n{clients} clients, {seconds} s each, one after another on this machine "
      f"({len(__import__('os').sched_getaffinity(0))} cores; load average {load_before} before, {load_after} after)")
print(f"{'system':<40} {'unit':<10} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}   {'per s / pg2pc':>13} {'p50 / pg2pc':>11}")
for name, unit, row in rows:
    print(f"{name:<40} {unit:<10} {row['rate']:>8.1f} {row['p50']:>8.2f} {row['p99']:>8.2f}"
          f"   {row['rate'] / pg['rate']:>13.2f} {row['p50'] / pg['p50']:>11.2f}")
print(f"shop: {shop['committed']} committed, {shop['aborted']} aborted, {shop['unknown']} unknown, audit {shop['audit']}; "
      f"store: {store['committed']} committed, {store['aborted']} aborted")
PY
