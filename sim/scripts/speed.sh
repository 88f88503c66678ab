#!/usr/bin/env bash
# The simulator's own speed (issue 16): fault-free simulated transactions per second of
# CPU time and peak resident memory at two run lengths, then the wall and CPU time of a
# 200-seed all-fault sweep per workload on one thread.
#   sim/scripts/speed.sh [DTX_SIM_BINARY] [OUT.json-prefix]
# Uses GNU time (/usr/bin/time -v). CPU (user) time is the figure to compare on a shared
# machine; wall time is printed too. Every run's --json is kept (OUT-<txns>.json) so that
# two binaries can be compared for identical results.
set -euo pipefail
binary=${1:-target/release/dtx-sim}
prefix=${2:-/tmp/dtx-sim-speed}
[ -x "$binary" ] || { echo "$0: no executable simulator at $binary" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "$0: needs GNU time at /usr/bin/time" >&2; exit 1; }
measure() {
  # $1: label; the rest: the command. Prints label, user s, wall, peak RSS MB.
  local label=$1; shift
  local log
  log=$(mktemp)
  "$@" 2>"$log" >"$prefix-$label.json" || true
  awk -v label="$label" '
    /User time/ {user=$4}
    /Elapsed \(wall clock\)/ {wall=$8}
    /Maximum resident set size/ {rss=$6}
    END {printf "%-22s user %7.2f s  wall %8s  peak RSS %6.0f MB\n", label, user, wall, rss/1024}
  ' "$log"
  rm -f "$log"
}
for txns in 100000 400000; do
  measure "run-$txns" /usr/bin/time -v "$binary" run --seed 5 --nodes 5 --f 1 \
    --txns "$txns" --faults none --workload register --json
done
for workload in register bank transfer; do
  measure "sweep-$workload" /usr/bin/time -v "$binary" sweep --seeds 200 --faults all \
    --workload "$workload" --threads 1 --json
done
echo "transactions/s of CPU: txns / user seconds of the run-* lines"
