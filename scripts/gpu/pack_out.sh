#!/usr/bin/env bash
# The device tool returns at most 8 files from $OUT (more are listed as left out and lost: the
# fifty-sixth session lost an issue-4 table that way). When $OUT holds more regular files than
# PACK_MAX (default 8), pack all of them, subfolders included, into $OUT/logs.tgz and remove the
# originals, so everything comes back as one file; otherwise leave $OUT as it is.
# Usage: OUT=/path bash scripts/gpu/pack_out.sh   (scripts/gpu/call.sh runs it last)
set -u
out="${OUT:?OUT must name the folder to pack}"
[ -d "$out" ] || exit 0
n=$(find "$out" -type f | wc -l)
[ "$n" -gt "${PACK_MAX:-8}" ] || exit 0
tmp=$(mktemp "${TMPDIR:-/tmp}/pack_out.XXXXXX.tgz")
tar -C "$out" -czf "$tmp" . || { echo "pack_out: tar failed; $OUT left as it is"; rm -f "$tmp"; exit 1; }
find "$out" -mindepth 1 -delete
mv "$tmp" "$out/logs.tgz"
echo "pack_out: $n files under \$OUT packed into logs.tgz (tar -xzf logs.tgz)"
