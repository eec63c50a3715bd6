#!/usr/bin/env bash
# Checks that redkit's `rust-version` is exactly what its dependency tree needs: the highest
# `rust-version` of every package the library pulls in (normal and build dependencies, every
# feature on, every platform; dev-dependencies do not reach users), from `cargo metadata`
# over the lock file. Prints the packages that set the floor. Needs jq.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v jq >/dev/null 2>&1; then
    echo "msrv.sh needs jq (scripts/setup.sh installs it, or apt-get install jq)" >&2
    exit 1
fi

mkdir -p target
cargo metadata --format-version 1 --all-features --locked 2>/dev/null | jq -r '
  # "1.71.1" -> [1, 71, 1], for comparing.
  def version: split(".") | map(tonumber) | . + [0, 0, 0] | .[0:3];
  . as $m
  | ($m.packages[] | select(.name == "redkit" and .source == null)) as $own
  | ($m.resolve.nodes
      | map({key: .id, value: [.deps[]
          | select(any(.dep_kinds[]; .kind == null or .kind == "build")) | .pkg]})
      | from_entries) as $graph
  | {seen: [$own.id], todo: [$own.id]}
  | until(.todo | length == 0;
      ([.todo[] | $graph[.][]] | unique) as $next
      | ($next - .seen) as $new
      | .seen += $new | .todo = $new)
  | .seen as $tree
  | [$m.packages[] | select(.id as $id | $tree | index($id)) | select(.id != $own.id)
      | select(.rust_version != null)] as $deps
  | ($deps | map(.rust_version | version) | max) as $need
  | ($deps | map(select((.rust_version | version) == $need) | "\(.name) \(.version)")) as $by
  | ($own.rust_version // "none") as $ours
  | "ours=\($ours)\nneeded=\($need | map(tostring) | join("."))\nby=\($by | join(", "))\npackages=\($tree | length)"
' > target/msrv.txt

ours=$(sed -n 's/^ours=//p' target/msrv.txt)
needed=$(sed -n 's/^needed=//p' target/msrv.txt)
by=$(sed -n 's/^by=//p' target/msrv.txt)
count=$(sed -n 's/^packages=//p' target/msrv.txt)

# Compare as versions: 1.88 and 1.88.0 are the same.
normalize() { awk -F. '{ printf "%d.%d.%d\n", $1, $2, $3 }' <<<"$1"; }
if [ "$ours" = "none" ]; then
    echo "msrv: Cargo.toml has no rust-version (the tree needs $needed, set by $by)" >&2
    exit 1
fi
if [ "$(normalize "$ours")" != "$(normalize "$needed")" ]; then
    echo "msrv: rust-version is $ours but the dependency tree needs $needed (set by $by)" >&2
    exit 1
fi
echo "msrv: rust-version $ours is what the tree needs ($count packages; highest: $by)"
