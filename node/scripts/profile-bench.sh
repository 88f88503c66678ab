#!/usr/bin/env bash
# Where the CPU of one transaction goes: starts 3 data nodes on 127.0.0.1 (F=1, fsync on),
# runs `dtx bench` under `perf record -a -g`, and prints CPU microseconds per committed
# transaction by process and thread (from /proc) and by component (perf samples grouped
# by symbol: libp2p's Noise, yamux, tokio, CBOR, the protocol, allocation, kernel TCP,
# kernel fsync/block, kernel scheduling and futexes...).
#
#   node/scripts/profile-bench.sh [WORKLOAD] [CLIENTS] [SECONDS]     (bank 8 15)
#
# Needs perf (linux-perf) and root or perf_event_paranoid <= 1. DTX=path/to/dtx picks
# the binary (default target/release/dtx, built if missing); KEEP=1 keeps the directory
# with perf.data for `perf report -i`.
set -euo pipefail
workload=${1:-bank}
clients=${2:-8}
seconds=${3:-15}
cd "$(dirname "$0")/../.."
dtx=${DTX:-target/release/dtx}
if [[ ! -x $dtx ]]; then
  cargo build --release -p dtx-cli --bin dtx
fi
command -v perf >/dev/null || { echo "profile-bench: perf not found (apt install linux-perf)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "profile-bench: python3 not found" >&2; exit 2; }
dir=$(mktemp -d /tmp/dtx-profile-XXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
"$dtx" init --nodes 3 --f 1 --dir "$dir" >/dev/null
for name in n1 n2 n3; do
  RUST_LOG=warn "$dtx" node --config "$dir/cluster.toml" --name $name --data-dir "$dir/$name" \
    >"$dir/$name.out" 2>&1 &
  pids+=($!)
done
sleep 2
threads() {
  # pid tid comm utime+stime (ticks) for every thread of the nodes
  for pid in "${pids[@]}"; do
    for task in /proc/$pid/task/*; do
      [[ -r $task/stat ]] || continue
      local stat; stat=$(<"$task/stat")
      local comm=${stat#*(}; comm=${comm%%)*}
      set -- ${stat##*) }
      echo "$pid ${task##*/} ${comm// /_} $(( ${12} + ${13} ))"
    done
  done
}
threads >"$dir/before"
echo "profiling $workload with $clients clients for ${seconds}s (perf record -a -g -F 499)..." >&2
perf record -a -g -F 499 -o "$dir/perf.data" -- \
  /usr/bin/time -f "%U %S" -o "$dir/time" \
  "$dtx" bench --config "$dir/cluster.toml" --workload "$workload" --clients "$clients" \
  --duration "${seconds}s" --json >"$dir/out" 2>"$dir/perf.log"
threads >"$dir/after"
perf report -i "$dir/perf.data" --no-children --sort comm,dso,sym --stdio -g none \
  --percent-limit 0 2>/dev/null >"$dir/report.txt"
python3 - "$dir" "$workload" "$clients" <<'PY'
import json, os, re, sys
from collections import defaultdict
d, workload, clients = sys.argv[1], sys.argv[2], sys.argv[3]
report = json.loads(open(f"{d}/out").read().strip().splitlines()[-1])
committed = max(report["committed"], 1)
hz = os.sysconf("SC_CLK_TCK")
user, system = map(float, open(f"{d}/time").read().split()[-2:])
def ticks(path):
    out = {}
    for line in open(path):
        pid, tid, comm, t = line.split()
        out[(pid, tid)] = (comm, int(t))
    return out
before, after = ticks(f"{d}/before"), ticks(f"{d}/after")
by_thread = defaultdict(float)
for key, (comm, t) in after.items():
    spent = t - before.get(key, (comm, 0))[1]
    by_thread[comm] += spent / hz
nodes = sum(by_thread.values())
total = nodes + user + system
us = lambda seconds: seconds / committed * 1e6
print(f"{workload}, {clients} clients: {report['tps']:.0f} committed/s, p50 {report['p50_ms']:.2f} ms, "
      f"{committed} committed")
print(f"fsyncs_per_txn {report.get('fsyncs_per_txn', 0):.2f}, msgs_per_txn {report.get('msgs_per_txn', 0):.2f}, "
      f"msgs_per_write {report.get('msgs_per_write', 0):.2f}")
print(f"cpu_us_per_txn {us(total):.0f} (3 nodes {us(nodes):.0f}, bench client {us(user + system):.0f}; "
      f"client user {us(user):.0f} / kernel {us(system):.0f})")
print("\nnode threads (all 3 nodes, µs per transaction):")
for comm, seconds in sorted(by_thread.items(), key=lambda kv: -kv[1]):
    if us(seconds) >= 1:
        print(f"  {comm:<24} {us(seconds):7.0f}")
buckets = [
    ("crypto (Noise: ChaCha20-Poly1305)", r"chacha|poly1305|snow::|x25519|blake2|sha2|ring::|aead"),
    ("yamux", r"yamux"),
    ("libp2p (swarm, stream, other)", r"libp2p|multistream|quick_protobuf|asynchronous_codec"),
    ("tokio runtime and channels", r"tokio::|mio::|futures_channel|futures_util|async_channel|parking_lot"),
    ("CBOR encode/decode (ciborium, serde)", r"ciborium|serde"),
    ("dtx protocol (state machines)", r"dtx_protocol"),
    ("dtx node and client (event loop, WAL, links)", r"dtx_node|dtx_cli|dtx::"),
    ("allocation and copies", r"malloc|free|realloc|calloc|memcpy|memmove|memset|_int_|alloc::|__rust_alloc|__rust_dealloc|tcache"),
    ("kernel: TCP/IP loopback and sockets", r"\[k\].*(tcp|ip_|ipv4|sock|skb|net_|netif|loopback|__dev|napi|__sys_send|__sys_recv|inet|csum|nf_)"),
    ("kernel: scheduling, futex, epoll, wake-ups", r"\[k\].*(futex|schedule|ttwu|wake|pick_next|enqueue|dequeue|update_curr|update_load|epoll|ep_|switch_to|finish_task|hrtimer|select_task|sched)"),
    ("kernel: syscall entry/exit, interrupts, other", r"\[k\]"),
]
# Kernel time of the WAL threads and of the block/soft-interrupt workers is the fsync
# path whatever the symbol (this VM has no PMU: perf samples on a timer, and time with
# interrupts disabled lands on the symbol that re-enables them).
fsync_path = "kernel: fsync path (WAL threads' kernel time, block workers)"
def ours(comm):
    return comm.startswith(("dtx", "tokio-runtime", "futures-timer", "kworker", "ksoftirqd", "jbd2"))
line_re = re.compile(r"^\s+([\d.]+)%\s+(\S+)\s+(\S+)\s+(\[[.k]\])\s+(.*)$")
shares = defaultdict(float)
procs = defaultdict(float)
for line in open(f"{d}/report.txt"):
    m = line_re.match(line)
    if not m:
        continue
    pct, comm, dso, kind, sym = float(m[1]), m[2], m[3], m[4], m[5]
    if not ours(comm):
        continue
    procs[comm] += pct
    text = f"{kind} {dso} {sym}"
    if kind == "[k]" and (comm.endswith("-wal") or not comm.startswith(("dtx", "tokio", "futures"))):
        shares[fsync_path] += pct
        continue
    for name, pattern in buckets:
        if re.search(pattern, text, re.IGNORECASE):
            shares[name] += pct
            break
    else:
        shares["other (user)"] += pct
busy = sum(shares.values()) or 1.0
print("\nby component (share of the samples of the dtx processes and the kernel's workers; "
      "µs scaled to the cluster+client figure above):")
for name, pct in sorted(shares.items(), key=lambda kv: -kv[1]):
    print(f"  {name:<48} {100 * pct / busy:5.1f} %  {us(total) * pct / busy:7.0f} µs")
print("\nby thread name (share of the same samples):")
for comm, pct in sorted(procs.items(), key=lambda kv: -kv[1])[:10]:
    print(f"  {comm:<24} {100 * pct / busy:5.1f} %")
PY
