#!/usr/bin/env bash
# The content hash of csrc/ that benchmarks/gpu_suite.sh prints on the device ("csrc content
# hash ..."), for a commit (default HEAD) or, with --tree, for the working tree: matches a device
# log to the sources that ran. Usage: bash scripts/csrc_hash.sh [REV | --tree]
set -euo pipefail
cd "$(dirname "$0")/.."
h() { find csrc -type f -print0 | LC_ALL=C sort -z | xargs -0 sha1sum | sha1sum | cut -c1-12; }
if [ "${1:-}" = "--tree" ]; then h; exit 0; fi
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
git archive "${1:-HEAD}" csrc | tar -x -C "$d"
(cd "$d" && h)
