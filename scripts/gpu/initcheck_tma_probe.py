"""Does compute-sanitizer initcheck see stores made by the TMA (cp.async.bulk.tensor)?

Writes a (64, 128) fp32 buffer allocated with torch.empty by one of three kernels, then reads it
with a torch kernel. Run each mode under `compute-sanitizer --tool initcheck`: a report on the
read means initcheck did not see the store that initialised the memory.
  plain  Triton tl.store (generic proxy)            -> expected: no report
  tma    Triton tensor-descriptor store (TMA, async) -> the question
  verify jetspec_ext.verify_linear (CUTLASS TMA-store epilogue)
  cublas torch.nn.functional.linear in bf16 (cuBLAS), at the shape of the sanitizer's tiny decoder
         target's q_proj (37 x 128 @ 128 x 512) and at one Qwen3-8B-sized shape (128 x 4096 @ 4096
         x 4096): whether cuBLAS's own Hopper kernels store through the TMA too
  hf     one forward of the sanitizer's tiny random Qwen3 target (bf16, sanitize_ops.tiny_qwen3_target,
         1 layer) through transformers alone: jetspec_ext is imported, none of its ops runs, so
         reports here are not the decoder's
Usage: python3 scripts/gpu/initcheck_tma_probe.py {plain,tma,verify,cublas,hf}
"""
import os
import sys
import torch
import triton
import triton.language as tl

M, N = 64, 128


@triton.jit
def fill_plain(out_ptr, N: tl.constexpr, BM: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)[:, None]
    cols = tl.arange(0, N)[None, :]
    tl.store(out_ptr + rows * N + cols, tl.full((BM, N), 1.0, tl.float32))


@triton.jit
def fill_tma(desc, N: tl.constexpr, BM: tl.constexpr):
    desc.store([tl.program_id(0) * BM, 0], tl.full((BM, N), 1.0, tl.float32))


def main(mode):
    if mode in ("plain", "tma"):
        out = torch.empty(M, N, device="cuda", dtype=torch.float32)
    if mode == "plain":
        fill_plain[(M // 16,)](out, N, 16)
    elif mode == "tma":
        from triton.tools.tensor_descriptor import TensorDescriptor
        fill_tma[(M // 16,)](TensorDescriptor.from_tensor(out, [16, N]), N, 16)
    elif mode == "cublas":
        for m, k, n in ((37, 128, 512), (128, 4096, 4096)):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            y = torch.nn.functional.linear(x, w).float()  # the .float() read is the check
            torch.cuda.synchronize()
            print(f"cublas {m}x{k} @ {k}x{n} done (reports above this line are its reads)", flush=True)
        out = y
    elif mode == "hf":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from sanitize_ops import tiny_qwen3_target
        model = tiny_qwen3_target(num_layers=1, device="cuda")
        with torch.no_grad():
            out = model(torch.randint(1024, (1, 37), device="cuda")).logits.float()
    else:
        import jetspec_ext
        x = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N * 8, 4096, device="cuda", dtype=torch.bfloat16)
        out = jetspec_ext.verify_linear(x, w, None).float()  # the .float() read is the check
    torch.cuda.synchronize()
    print(mode, "sum", float(out.sum()), "expected", M * N if mode in ("plain", "tma") else "(any)")


if __name__ == "__main__":
    main(sys.argv[1])
