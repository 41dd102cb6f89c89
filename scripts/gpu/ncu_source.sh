#!/usr/bin/env bash
# ncu source-level (SASS) stall samples of split_kernel_ws on one cell; exports the source page.
set -uo pipefail
P=${1:-1024}; N=${2:-256}
mkdir -p $OUT/ncs
cat > /tmp/ta_drv.py <<PY
import torch, jetspec_ext
torch.manual_seed(0)
P, N, Hq, Hkv, D = $P, $N, 32, 8, 128
S = P + N + 64
q = torch.randn(1, N, Hq, D, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, Hkv, S, D, device="cuda", dtype=torch.bfloat16)
v = torch.randn(1, Hkv, S, D, device="cuda", dtype=torch.bfloat16)
pl = torch.tensor([P], dtype=torch.int32, device="cuda")
mask = torch.full((1, N, (N + 31) // 32), -1, dtype=torch.int32, device="cuda")
for _ in range(6):
    jetspec_ext.tree_attention(q, k, v, pl, mask)
torch.cuda.synchronize()
PY
ncu --section SourceCounters --section WarpStateStats --import-source no -k regex:split_kernel_ws --launch-skip 4 --launch-count 1 -f -o /tmp/ncs_rep python3 /tmp/ta_drv.py > $OUT/ncs/ncu.log 2>&1 || { tail -20 $OUT/ncs/ncu.log; exit 1; }
ncu -i /tmp/ncs_rep.ncu-rep --page source --csv --print-source sass > $OUT/ncs/src.csv 2> $OUT/ncs/src.err; echo "src rc $?"; head -c 600 $OUT/ncs/src.err
ls -la $OUT/ncs; head -3 $OUT/ncs/src.csv | cut -c1-600
