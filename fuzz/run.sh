#!/usr/bin/env bash
# Builds and runs every dtx fuzz target for SECONDS_PER_TARGET seconds (default 20), on
# stable Rust (cargo-fuzz with `-s none`: libFuzzer and coverage, no sanitizer), release
# with debug assertions and overflow checks (`-O -a`). Replays the saved crashes in
# fuzz/regressions/<target>/ first. Exits non-zero if any target crashes.
#
# Writes only under fuzz/: the build and the corpus it grows go to fuzz/target/ (the
# committed seeds in fuzz/corpus/ are read, never written), crash inputs to
# fuzz/artifacts/<target>/.
#
# Usage: bash fuzz/run.sh [SECONDS_PER_TARGET] [--protocol-only]
# --protocol-only skips config_parse, the one target that needs the node crate (and an
# instrumented build of libp2p, about 20 minutes on 2 cores): what CI runs.
set -euo pipefail

seconds="${1:-20}"
protocol_only=0
if [ "${2:-}" = "--protocol-only" ]; then
    protocol_only=1
elif [ -n "${2:-}" ]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [--protocol-only]" >&2
    exit 2
fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [--protocol-only]  (a whole number of seconds, at least 1)" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The fuzz crate is its own workspace with its own build (instrumented for coverage).
export CARGO_TARGET_DIR="$fuzz_dir/target"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --version 0.13.2
fi

# Target and the longest input it is fed (bytes): frames, heartbeat digests and configs
# of a small cluster fit in 4 KiB; a log needs room for a few dozen records.
targets=(
    "frame_decode 4096"
    "message_handle 4096"
    "record_log_replay 8192"
    "heartbeat_decode 4096"
)
build_flags=(-O -a -s none --fuzz-dir "$fuzz_dir")
if [ "$protocol_only" -eq 0 ]; then
    targets+=("config_parse 4096")
    build_flags+=(--features node)
fi
cargo fuzz build "${build_flags[@]}"

failed=()
for entry in "${targets[@]}"; do
    read -r target max_len <<<"$entry"
    regressions_failed=0
    for regression in "$fuzz_dir/regressions/$target"/*; do
        [ -e "$regression" ] || continue
        echo "=== $target: replaying ${regression#"$fuzz_dir"/}"
        if ! cargo fuzz run "${build_flags[@]}" "$target" "$regression" -- \
            -runs=1 -rss_limit_mb=2048 -timeout=10; then
            failed+=("$target (saved crash ${regression#"$fuzz_dir"/})")
            regressions_failed=1
        fi
    done
    # A target that still crashes on a saved input would only find it again.
    [ "$regressions_failed" -eq 0 ] || continue
    work_corpus="$fuzz_dir/target/corpus/$target"
    mkdir -p "$work_corpus" "$fuzz_dir/artifacts/$target"
    echo "=== $target: fuzzing for $seconds s"
    # libFuzzer adds new inputs to the first corpus directory only: the work copy.
    if ! cargo fuzz run "${build_flags[@]}" "$target" "$work_corpus" "$fuzz_dir/corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "run.sh: crashes (new inputs under fuzz/artifacts/):" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "run.sh: every target ran $seconds s without a crash"
