#!/usr/bin/env bash
# Fails when a crate shared by the build and the test build gets other features in the test
# build (the dev-dependencies turn them on): then `cargo test --release` recompiles burn and
# polars instead of reusing `cargo build --release`'s artifacts. The fix is to name the crate
# with those features under [dependencies] in Cargo.toml (see the comment there).
set -euo pipefail
cd "$(dirname "$0")/.."
tree() { cargo tree --offline -e "$1" -f '{p} {f}' --prefix none --no-dedupe | sort -u; }
build=$(mktemp) test=$(mktemp)
trap 'rm -f "$build" "$test"' EXIT
tree normal,build >"$build"
tree normal,build,dev >"$test"
# A crate on both sides of the diff is one whose features differ.
differ=$(diff "$build" "$test" | grep '^[<>]' | awk '{print $2" "$3}' | sort | uniq -d || true)
if [ -n "$differ" ]; then
  echo "features differ between the build and the test build for:" >&2
  diff "$build" "$test" | grep -F -f <(echo "$differ" | awk '{print $1" "$2}') >&2 || true
  exit 1
fi
echo "build and test build share features"
