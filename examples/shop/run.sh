#!/usr/bin/env bash
# The shop example (seeds 002 and 003): inventory, payment and shipping each keep their data
# in their own PostgreSQL database (two local instances from temporary data directories),
# joined to dtx transactions through PostgreSQL's prepared transactions with no service code
# (examples/shop/*.toml). Orders are placed concurrently while the inventory service's dtx
# node is SIGKILLed and restarted, then the payment instance's PostgreSQL crashes and starts
# again; then an audit with plain SQL. Arguments pass through (--workers N --seconds S
# --no-faults --keep --bench).
set -euo pipefail
cd "$(dirname "$0")/../.."

have_postgres() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
    command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ] && return 0
    command -v initdb >/dev/null
}
if ! have_postgres; then
    echo "shop: PostgreSQL not found; installing it through apt-get" >&2
    if ! command -v apt-get >/dev/null; then
        echo "shop: no apt-get here: install PostgreSQL (server and client) and retry" >&2
        exit 2
    fi
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    # Debian starts a system cluster on install; the example runs its own on free ports.
fi
cargo build --release -p dtx-cli --bin dtx --example shop
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/examples/shop" --dtx "$target/release/dtx" "$@"
