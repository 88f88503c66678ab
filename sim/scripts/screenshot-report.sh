#!/usr/bin/env bash
# Takes a screenshot of a lab report as a browser shows it, to look at with an image viewer.
#   sim/scripts/screenshot-report.sh REPORT.html OUT.png [WIDTH HEIGHT]
# Needs chromium (Debian: apt-get install -y chromium). Headless, no network use: the
# report is self-contained, and the browser's own background traffic is switched off.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTH HEIGHT]" >&2
  exit 2
fi
report=$1
out=$2
width=${3:-1300}
height=${4:-2400}
[ -f "$report" ] || { echo "$0: no such report: $report" >&2; exit 1; }
browser=""
for candidate in chromium chromium-browser google-chrome; do
  if command -v "$candidate" >/dev/null 2>&1; then browser=$candidate; break; fi
done
if [ -z "$browser" ]; then
  echo "$0: chromium not found (apt-get install -y chromium)" >&2
  exit 1
fi
report_path=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
mkdir -p "$(dirname "$out")"
out_path=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$out_path"
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" --window-size="$width,$height" \
  --screenshot="$out_path" "file://$report_path" >/dev/null 2>&1 || true
if [ ! -s "$out_path" ]; then
  echo "$0: $browser wrote no screenshot to $out_path" >&2
  exit 1
fi
echo "$out_path"
