#!/usr/bin/env bash
# The travel example (seed 004): three provider services (flights, hotels, cars; Python,
# standard library only) joined to dtx transactions through the HTTP contract, trips
# booked concurrently, the flights provider SIGKILLed and restarted mid-run, then an audit
# from the providers' own state. Arguments pass through (--workers N --seconds S
# --no-kill --keep).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v python3 >/dev/null; then
    echo "travel: python3 is required for the provider services (apt-get install python3)" >&2
    exit 2
fi
cargo build --release -p dtx-cli --bin dtx --example travel
exec target/release/examples/travel --dtx target/release/dtx "$@"
