"""Does compute-sanitizer initcheck see stores made by the TMA (cp.async.bulk.tensor)?

Writes a (64, 128) fp32 buffer allocated with torch.empty by one of three kernels, then reads it
with a torch kernel. Run each mode under `compute-sanitizer --tool initcheck`: a report on the
read means initcheck did not see the store that initialised the memory.
  plain  Triton tl.store (generic proxy)            -> expected: no report
  tma    Triton tensor-descriptor store (TMA, async) -> the question
  verify jetspec_ext.verify_linear (CUTLASS TMA-store epilogue)
Usage: python3 scripts/gpu/initcheck_tma_probe.py {plain,tma,verify}
"""
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
    out = torch.empty(M, N, device="cuda", dtype=torch.float32)
    if mode == "plain":
        fill_plain[(M // 16,)](out, N, 16)
    elif mode == "tma":
        from triton.tools.tensor_descriptor import TensorDescriptor
        fill_tma[(M // 16,)](TensorDescriptor.from_tensor(out, [16, N]), N, 16)
    else:
        import jetspec_ext
        x = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N * 8, 4096, device="cuda", dtype=torch.bfloat16)
        out = jetspec_ext.verify_linear(x, w, None).float()  # the .float() read is the check
    torch.cuda.synchronize()
    print(mode, "sum", float(out.sum()), "expected", M * N if mode != "verify" else "(any)")


if __name__ == "__main__":
    main(sys.argv[1])
