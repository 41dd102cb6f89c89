"""Every CUDA kernel of jetspec_ext on a spread of shapes and variants, for compute-sanitizer.

Run it under the sanitizer (scripts/gpu/sanitize.sh does, with each tool):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \\
        python scripts/gpu/sanitize_ops.py [--quick] [--only tree_attention,...]

Why the environment variable: PyTorch's caching allocator hands out pieces of large cudaMalloc
blocks, so a kernel reading or writing past the end of its tensor usually stays inside a block the
sanitizer considers valid. With caching off each tensor is its own allocation, sized exactly, and
every cache here is allocated tight (S = prefix + tree, no slack) so that a read of one slot too
many is an out-of-bounds access.

The cases cover each kernel variant and launch path the launchers can pick (tree_attention: mma /
wgmma_pipe / wgmma_ws_pp, one split, the cluster merge, merge_kernel, Q by cp.async; build_tree:
tiled and streaming statistics, K = 8 and 16; tree_accept: greedy and sampling with top-k / top-p;
skinny_linear: the CUDA-core kernel, the tensor-core kernel with each tiling and a K split;
verify_linear: every tile configuration and schedule, with and without the residual), plus a few
rounds of the decoder on a tiny random Qwen3 target and head (eager; CUDA-graphed too when the
caching allocator is on, since graph capture cannot cudaMalloc). Each case
synchronises and checks its outputs for NaN where NaN cannot be right, so an error is reported
against the case that caused it. Prints one line per case and "sanitize_ops: N cases done".
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np
import torch

import jetspec_ext
from jetspec_ext.reference.build_tree import ancestor_mask

DEV = "cuda"  # --device cpu runs the same cases on the CPU ops (a check of this script itself)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def env(**kv):
    """Set JETSPEC_* variables for one case (the launchers read them per call)."""
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update({k: str(v) for k, v in kv.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def random_tree_mask(B, N, gen, kind="random"):
    """(B, N, ceil(N/32)) i32 ancestor masks of random trees (kind: random, chain, flat)."""
    masks = []
    for _ in range(B):
        par = [-1] + [i - 1 if kind == "chain" else 0 if kind == "flat"
                      else int(torch.randint(i, (1,), generator=gen)) for i in range(1, N)]
        masks.append(torch.from_numpy(ancestor_mask(np.array(par), N)))
    return torch.stack(masks)


# ---- tree_attention ---------------------------------------------------------------------------
def tree_attention_inputs(B, N, Hq, Hkv, D, plens, dtype=torch.bfloat16, kind="random", seed=0, device=None):
    """(q, k_cache, v_cache, prefix_lens, tree_mask) of one seeded case on ``device`` (default DEV);
    also used by stress_tree_attention.py."""
    device = device or DEV
    gen = torch.Generator().manual_seed(seed)
    S = max(plens) + N  # tight: no slot past the longest row's tree
    q = torch.randn(B, N, Hq, D, generator=gen).to(device, dtype)
    k = torch.randn(B, Hkv, S, D, generator=gen).to(device, dtype)
    v = torch.randn(B, Hkv, S, D, generator=gen).to(device, dtype)
    plen = torch.tensor(plens, dtype=torch.int32, device=device)
    mask = random_tree_mask(B, N, gen, kind).to(device)
    return q, k, v, plen, mask


def tree_attention_case(B, N, Hq, Hkv, D, plens, dtype=torch.bfloat16, kind="random", seed=0):
    q, k, v, plen, mask = tree_attention_inputs(B, N, Hq, Hkv, D, plens, dtype, kind, seed)
    out, lse = jetspec_ext.tree_attention(q, k, v, plen, mask, D ** -0.5)
    sync()
    assert not out.isnan().any() and not lse.isnan().any(), "NaN in tree_attention output"


TA_SHAPES = [  # (B, N, Hq, Hkv, D, prefix lengths, dtype, mask kind)
    (1, 1, 32, 8, 128, [1000], torch.bfloat16, "random"),      # decoding
    (2, 37, 12, 4, 64, [0, 131], torch.bfloat16, "random"),    # prefix 0, odd lengths, G = 3
    (1, 128, 32, 8, 128, [1024], torch.bfloat16, "random"),    # the issue-4 shape
    (3, 45, 8, 8, 128, [5, 777, 2050], torch.float16, "chain"),  # G = 1, rows apart
    (1, 64, 32, 4, 128, [4096], torch.bfloat16, "flat"),       # G = 8
    (1, 300, 16, 2, 64, [70], torch.bfloat16, "random"),       # many tree tiles
]
TA_QUICK = [0, 1, 2]
TA_VARIANTS = [  # launcher settings (environment) per variant
    {"JETSPEC_TREE_ATTN_IMPL": "mma"},
    {"JETSPEC_TREE_ATTN_IMPL": "wgmma_pipe"},
    {"JETSPEC_TREE_ATTN_IMPL": "wgmma_ws_pp"},
    {"JETSPEC_TREE_ATTN_IMPL": "wgmma_ws_pp", "JETSPEC_TREE_ATTN_SPLITS": "4",
     "JETSPEC_TREE_ATTN_CLUSTER": "require"},
    {"JETSPEC_TREE_ATTN_IMPL": "wgmma_ws_pp", "JETSPEC_TREE_ATTN_SPLITS": "3",
     "JETSPEC_TREE_ATTN_CLUSTER": "0", "JETSPEC_TREE_ATTN_Q_TMA": "0"},
    {"JETSPEC_TREE_ATTN_IMPL": "wgmma_pipe", "JETSPEC_TREE_ATTN_SPLITS": "16"},
    {"JETSPEC_TREE_ATTN_IMPL": "mma", "JETSPEC_TREE_ATTN_SPLITS": "5"},
]


def cases_tree_attention(quick, impls=None):
    for i, (B, N, Hq, Hkv, D, plens, dtype, kind) in enumerate(TA_SHAPES):
        if quick and i not in TA_QUICK:
            continue
        for var in TA_VARIANTS:
            if impls is not None and var["JETSPEC_TREE_ATTN_IMPL"] not in impls:
                continue
            name = f"tree_attention B{B} N{N} Hq{Hq} Hkv{Hkv} D{D} P{plens} {kind} " + \
                   " ".join(f"{k[18:]}={v}" for k, v in var.items())
            yield name, lambda a=(B, N, Hq, Hkv, D, plens, dtype, kind), var=var: _with(
                var, tree_attention_case, *a)


def _with(var, fn, *a, **kw):
    with env(**var):
        try:
            fn(*a, **kw)
        except RuntimeError as e:  # forced clusters the launcher's wave model refuses for this shape
            if var.get("JETSPEC_TREE_ATTN_CLUSTER") != "require" or "CLUSTER=require" not in str(e):
                raise
            print("  (no cluster merge for this shape: the launcher refused it, as documented)")


# ---- build_tree -> tree_accept -> commit_kv ---------------------------------------------------
def tree_pipeline_case(B, D, V, W, N, policy, T_draft, T, top_k, top_p, dtype=torch.bfloat16, seed=0):
    """build_tree on random draft logits, tree_accept on random target logits over that tree,
    commit_kv of the accepted path into a tight stacked cache."""
    gen = torch.Generator().manual_seed(seed)
    draft = (3 * torch.randn(B, D, V, generator=gen)).to(DEV, dtype)
    roots = torch.randint(V, (B,), generator=gen).to(DEV)
    toks, parents, depths, scores, mask, nn, fc, ns = jetspec_ext.build_tree(draft, roots, W, N, policy,
                                                                             T_draft)
    sync()
    assert int(nn.min()) >= 1 and int(parents[:, 0].max()) == -1, "build_tree: bad tree"
    logits = (3 * torch.randn(B, N, V, generator=gen)).to(DEV, dtype)
    rng = torch.tensor([1234, 0], device=DEV)
    max_depth = D
    acc, alen, nxt = jetspec_ext.tree_accept(logits, toks, parents, max_depth, rng, T, top_k, top_p)
    sync()
    assert int(alen.min()) >= 1, "tree_accept: empty path"
    C, Hkv, Dh = 4, 2, 64
    plen = torch.randint(0, 40, (B,), generator=gen, dtype=torch.int32)
    S = int(plen.max()) + N
    kv = torch.randn(C, B, Hkv, S, Dh, generator=gen).to(DEV, dtype)
    plen = plen.to(DEV)
    jetspec_ext.commit_kv(kv, plen, acc, alen)
    sync()


TREE_SHAPES = [  # (B, D, V, W, N, policy, draft T, T, top_k, top_p)
    (1, 16, 151936, 7, 128, "accum", 1.0, 0.0, 0, 1.0),      # the decoder's shape, greedy
    (1, 16, 151936, 16, 256, "topn", 0.7, 0.8, 50, 0.9),     # K = 16, sampling
    (2, 4, 300, 8, 40, "accum", 1.0, 1.0, 0, 0.95),          # tiny vocabulary, batch 2
    (1, 3, 300007, 16, 100, "topn", 1.3, 0.6, 0, 1.0),       # streaming statistics (V > 262144)
    (3, 8, 4099, 3, 1024, "accum", 1.0, 0.0, 0, 1.0),        # budget above the reachable nodes
]
TREE_QUICK = [0, 2]


def cases_tree_pipeline(quick):
    for i, s in enumerate(TREE_SHAPES):
        if quick and i not in TREE_QUICK:
            continue
        B, D, V, W, N, pol, td, T, k, p = s
        name = f"build_tree/tree_accept/commit_kv B{B} D{D} V{V} W{W} N{N} {pol} Td{td} T{T} k{k} p{p}"
        yield name, lambda s=s: tree_pipeline_case(*s)


# initcheck does not see stores made by the TMA (cp.async.bulk.tensor, the async proxy): memory
# that only a TMA store wrote reads as uninitialized (scripts/gpu/initcheck_tma_probe.py shows it
# on a Triton kernel, thirty-seventh session). verify_linear's CUTLASS epilogue stores its output
# that way, so under initcheck (sanitize.sh passes --skip-tma-output-reads) its output is not read
# back: initcheck still checks the kernel's own reads. That every output element is written is
# what the poisoned-output tests check (python_tests/test_verify_linear.py).
SKIP_TMA_OUTPUT_READS = False


# ---- skinny_linear / verify_linear --------------------------------------------------------------
def linear_case(op, M, K, N, dtype=torch.bfloat16, residual=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=gen).to(DEV, dtype)
    w = (torch.randn(N, K, generator=gen) / K ** 0.5).to(DEV, dtype)
    if op == "skinny":
        out = jetspec_ext.skinny_linear(x, w)
    else:
        r = torch.randn(M, N, generator=gen).to(DEV, dtype) if residual else None
        out = jetspec_ext.verify_linear(x, w, r)
    sync()
    if op == "verify" and SKIP_TMA_OUTPUT_READS:
        return  # (see SKIP_TMA_OUTPUT_READS)
    assert not out.isnan().any(), "NaN in linear output"


SKINNY_CASES = [  # (M, K, N, dtype, environment)
    (1, 4096, 1024, torch.bfloat16, {}),
    (3, 4096, 1000, torch.float16, {}),
    (3, 512, 40, torch.bfloat16, {"JETSPEC_SKINNY_GEMV": "0"}),
    (8, 4096, 1032, torch.bfloat16, {}),
    (16, 4096, 4096, torch.bfloat16, {"JETSPEC_SKINNY_CFG": "2x4"}),
    (7, 1024, 200, torch.float16, {"JETSPEC_SKINNY_CFG": "1x8", "JETSPEC_SKINNY_KSPLIT": "3"}),
]
VERIFY_CASES = [  # (M, K, N, residual, environment)
    (16, 4096, 1024, False, {}),
    (13, 1000, 264, True, {"JETSPEC_VERIFY_CFG": "s64"}),
    (128, 4096, 1024, True, {}),
    (77, 1000, 264, False, {"JETSPEC_VERIFY_CFG": "p64c2"}),
    (200, 4096, 1024, False, {}),
    (256, 1000, 264, False, {"JETSPEC_VERIFY_CFG": "t256"}),
    (150, 1000, 264, False, {"JETSPEC_VERIFY_CFG": "t128c2"}),
    (40, 4096, 1024, False, {"JETSPEC_VERIFY_CFG": "s128", "JETSPEC_VERIFY_SCHED": "streamk"}),
    (40, 4096, 1024, True, {"JETSPEC_VERIFY_CFG": "s128", "JETSPEC_VERIFY_SCHED": "splitk",
                            "JETSPEC_VERIFY_SPLITS": "3"}),
    (129, 4096, 1024, False, {"JETSPEC_VERIFY_CFG": "t128", "JETSPEC_VERIFY_SCHED": "dp"}),
]


def cases_linear(quick):
    for i, (M, K, N, dtype, var) in enumerate(SKINNY_CASES):
        if quick and i % 2:
            continue
        yield f"skinny_linear M{M} K{K} N{N} {dtype} {var}", \
            lambda a=(M, K, N, dtype), var=var: _with(var, linear_case, "skinny", *a)
    for i, (M, K, N, res, var) in enumerate(VERIFY_CASES):
        if quick and i % 2:
            continue
        yield f"verify_linear M{M} K{K} N{N} residual={res} {var}", \
            lambda a=(M, K, N), res=res, var=var: _with(var, linear_case, "verify", *a, residual=res)


# ---- the decoder --------------------------------------------------------------------------------
def tiny_qwen3_target(num_layers=4, device=None):
    """The decoder case's tiny random Qwen3 target (bf16, head dim 128, GQA 2, vocab 1024, untied),
    seeded; also initcheck_tma_probe.py's `hf` mode (one layer)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(hidden_size=128, intermediate_size=256, num_hidden_layers=num_layers, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=128, vocab_size=1024, max_position_embeddings=512,
                      tie_word_embeddings=False)
    return Qwen3ForCausalLM(cfg).eval().to(device or DEV, torch.bfloat16)


def decoder_case(cuda_graph):
    """A few speculative rounds and AR steps on a tiny random Qwen3 target (bf16, head dim 128,
    GQA 2) and a fresh 2-layer head: every op as the decoder calls it, Triton kernels included."""
    from jetspec_ext.decoder import HeadDrafter, generate, generate_ar
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.target import Target

    model = tiny_qwen3_target()
    head = JetSpecDraftHead.for_target(model.config, num_layers=2, block_size=8).to(DEV, torch.bfloat16)
    target = Target(model, head.target_layer_ids)
    drafter = HeadDrafter(head, target)
    prompt = torch.randint(1024, (1, 37)).tolist()[0]
    spec = generate(target, drafter, prompt, max_new_tokens=40, budget=32, width=4, cuda_graph=cuda_graph)
    ar = generate_ar(target, prompt, max_new_tokens=40, cuda_graph=cuda_graph)
    sync()
    assert len(spec.tokens[0]) == 40 and len(ar.tokens[0]) == 40


def cases_decoder(quick):
    yield "decoder eager", lambda: decoder_case(False)
    # CUDA-graph capture allocates through the caching allocator's private pool; with caching off
    # (as the sanitizer runs need) every allocation is a cudaMalloc, which capture forbids.
    if not quick and os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") != "1":
        yield "decoder cuda_graph", lambda: decoder_case(True)


def off_by_one_case():
    """The negative control: a Triton kernel that writes one element past its tensor's end. Under
    memcheck with PYTORCH_NO_CUDA_MEMORY_CACHING=1 this must be reported; if it is not, a clean
    memcheck run of the other cases shows nothing (sanitize.sh runs it first and checks)."""
    import triton
    import triton.language as tl

    @triton.jit
    def write_n_plus_one(ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(ptr + offs, 1.0, mask=offs <= n)  # <= : one element too many

    x = torch.empty(1000, device=DEV)
    write_n_plus_one[(1,)](x, x.numel(), BLOCK=1024)
    sync()


def cases_control(quick):
    yield "negative control: one float written past a tensor's end (must be reported)", off_by_one_case


GROUPS = {"tree_attention": cases_tree_attention, "tree": cases_tree_pipeline, "linear": cases_linear,
          "decoder": cases_decoder, "control": cases_control}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset (each kernel variant at least once)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: the same cases on the CPU ops (checks this script, not the kernels)")
    ap.add_argument("--impls", default=None,
                    help="tree_attention variants to keep, e.g. mma,wgmma_pipe (default: all)")
    ap.add_argument("--list", action="store_true", help="print the cases' names only (no GPU needed)")
    ap.add_argument("--only", default="tree_attention,tree,linear,decoder", help=f"comma-separated groups of {list(GROUPS)}")
    ap.add_argument("--match", default=None,
                    help="keep only cases whose name contains one of these comma-separated strings, "
                         "e.g. SPLITS=16,verify_linear")
    ap.add_argument("--skip-tma-output-reads", action="store_true",
                    help="do not read back op outputs written by TMA stores (for initcheck, which does not "
                         "track them); refused with the decoder group, whose layers read cuBLAS outputs, "
                         "which Hopper's cuBLAS kernels store by TMA too")
    args = ap.parse_args(argv)
    impls = None if args.impls is None else set(args.impls.split(","))

    match = None if args.match is None else [m for m in args.match.split(",") if m]

    def cases(g):
        cs = GROUPS[g](args.quick, impls) if g == "tree_attention" else GROUPS[g](args.quick)
        return (c for c in cs if match is None or any(m in c[0] for m in match))

    groups = [g for g in args.only.split(",") if g]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown groups {unknown}; known: {list(GROUPS)}")
    if args.skip_tma_output_reads and "decoder" in groups:
        # Measured on the H200 (thirty-eighth session, scripts/gpu/initcheck_tma_probe.py cublas / hf):
        # initcheck reports every element of a bf16 F.linear output when it is read, and 80,896
        # reads in one forward of the tiny Qwen3 target through transformers alone.
        ap.error("--skip-tma-output-reads (initcheck) cannot cover the decoder group: its layers read cuBLAS "
                 "outputs, which initcheck does not see stored on Hopper; run the decoder under memcheck, "
                 "racecheck or synccheck")
    global SKIP_TMA_OUTPUT_READS
    SKIP_TMA_OUTPUT_READS = args.skip_tma_output_reads
    if args.list:
        for g in groups:
            for name, _ in cases(g):
                print(name)
        return 0
    global DEV
    DEV = args.device
    if DEV == "cuda" and not (torch.cuda.is_available() and jetspec_ext.cuda_compiled()):
        print("sanitize_ops: needs a GPU and a CUDA build of jetspec_ext", file=sys.stderr)
        return 2
    n = 0
    for g in groups:
        for name, fn in cases(g):
            t0 = time.time()
            print(f"case: {name}", flush=True)
            fn()
            print(f"  ok ({time.time() - t0:.1f} s)", flush=True)
            n += 1
    print(f"sanitize_ops: {n} cases done", flush=True)
    if DEV == "cuda":
        # Leave without the interpreter's teardown: with PYTORCH_NO_CUDA_MEMORY_CACHING=1 tensors
        # still alive then are cudaFree'd after the CUDA runtime has begun unloading, which raises
        # ("driver shutting down") and fails the process after every case passed.
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
