#!/usr/bin/env bash
# The WHITEPAPER's node benchmark: 3 data nodes on 127.0.0.1, F=1, fsync on, transactions
# touching 2 nodes, closed-loop `dtx bench` at 1, 8 and 32 clients, then (if given
# --postgres) the PostgreSQL 2PC baseline from shared/peers/pg2pc.sh in the same run.
# Usage: [TRANSPORT=stream|request-response] [WORKLOADS="bank register"] \
#        node/scripts/bench-3-nodes.sh [SECONDS=15] [--postgres]
set -euo pipefail
seconds=${1:-15}
transport=${TRANSPORT:-stream}
workloads=${WORKLOADS:-bank register}
here=$(cd "$(dirname "$0")/../.." && pwd)
cargo build --release -p dtx-cli --quiet --manifest-path "$here/Cargo.toml"
dtx="$here/target/release/dtx"
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
for workload in $workloads; do
  for clients in 1 8 32; do
    "$dtx" bench --config "$dir/cluster.toml" --workload $workload --clients $clients \
      --duration "${seconds}s" --transport "$transport" --json | tail -1
  done
done
if [ "${2:-}" = "--postgres" ]; then
  bash "$here/../shared/peers/pg2pc.sh" 8 "$seconds" | tail -1
fi
