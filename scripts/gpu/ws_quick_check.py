"""Quick first check of a tree_attention kernel variant on the GPU: max error against the fp32
reference on three small cases, then graph-timed us on three cells (Qwen3-8B heads, bf16).
    PYTHONPATH=. python scripts/gpu/ws_quick_check.py wgmma_ws_pp    (one variant per process:
a hang or crash of an experimental kernel then costs only that process; wrap it in `timeout`)."""
import os, sys, torch, jetspec_ext
from jetspec_ext.reference.attention import tree_attention as ref
from benchmarks.harness import time_us
from benchmarks.probe_decode_attention import case
impl = sys.argv[1]
os.environ["JETSPEC_TREE_ATTN_IMPL"] = impl
torch.manual_seed(0)
for P, N in ((1024, 128), (100, 37), (0, 1)):
    q, k, v, pl, mask = case(P, N=N)
    out, lse = jetspec_ext.tree_attention(q, k, v, pl, mask)
    torch.cuda.synchronize()
    r, rl = ref(q.float(), k.float(), v.float(), pl, mask)
    print(impl, P, N, "err", (out.float() - r).abs().max().item(), "lse err", (lse - rl).abs().max().item(), flush=True)
for P, N in ((1024, 128), (4096, 256), (16384, 256)):
    a = case(P, N=N)
    print(impl, P, N, f"{time_us(lambda: jetspec_ext.tree_attention(*a), graph=True):.2f} us", flush=True)
