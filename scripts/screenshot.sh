#!/usr/bin/env bash
# Screenshot an HTML report with headless Chromium, to check that a page (a comparison,
# the leaderboard) shows its charts and tables. Chromium's console errors are printed and
# make it exit 3.
#
#   scripts/screenshot.sh PAGE.html OUT.png [WIDTH [HEIGHT]]
#
# Needs `chromium` (Debian: apt-get install -y chromium). Nothing is fetched from the
# network: the pages are self-contained.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 PAGE.html OUT.png [WIDTH [HEIGHT]]" >&2
    exit 2
fi
page=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1400}
height=${4:-3000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
    echo "no chromium found (apt-get install -y chromium)" >&2
    exit 1
fi
profile=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$profile" "$log"' EXIT

"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$profile" --enable-logging=stderr --v=0 \
    --screenshot="$out" --window-size="$width,$height" "file://$page" 2>"$log" || {
    cat "$log" >&2
    exit 1
}
[[ -s "$out" ]] || { echo "no screenshot written" >&2; exit 1; }
echo "$out"
# Page errors (a script that threw, a resource that failed) show up as console messages;
# they fail the check (exit 3) after the screenshot is written.
if grep -E "CONSOLE|Uncaught|Failed to load" "$log" >&2; then
    echo "error: the page logged errors (above)" >&2
    exit 3
fi
