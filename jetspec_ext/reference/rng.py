"""The counter-based random numbers every jetspec sampling op uses, in pure PyTorch.

The CPU and CUDA kernels compute the same numbers (csrc/kernels/rng.h). A draw is a pure function
of (seed, offset, row, index), so a CUDA graph replays with fresh randomness when the offset
(held in a device tensor) changes, and batch rows / tree nodes / vocabulary entries get
independent streams without any state.

Construction: splitmix64. ``row_base = mix(mix(seed ^ mix(offset)) + row * GOLDEN)`` and the
i-th value of the row is ``mix(row_base + (i + 1) * GOLDEN)``: the splitmix64 output sequence
seeded with row_base. Its top 24 bits give a uniform in (0, 1): ``(h >> 40) + 0.5) / 2**24``.
"""
import torch

_MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 holding uint64 bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic, uint64 bit patterns)."""
    z = (z ^ _srl(z, 30)) * _signed(_M1)
    z = (z ^ _srl(z, 27)) * _signed(_M2)
    return z ^ _srl(z, 31)


def row_base(seed: int, offset: int, rows: torch.Tensor) -> torch.Tensor:
    """Per-row stream key. rows: int64 tensor of row ids."""
    s = torch.tensor(_signed(seed), dtype=torch.int64)
    o = torch.tensor(_signed(offset), dtype=torch.int64)
    k = mix64(s ^ mix64(o))
    return mix64(k + rows.to(torch.int64) * _signed(GOLDEN))


def uniform(seed: int, offset: int, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Uniforms in (0, 1), float32, shape rows.shape + (n,): value i of each row."""
    base = row_base(seed, offset, rows).unsqueeze(-1)
    idx = torch.arange(1, n + 1, dtype=torch.int64, device=rows.device)
    h = mix64(base + idx * _signed(GOLDEN))
    top24 = _srl(h, 40)
    return ((top24.to(torch.float64) + 0.5) * (2.0 ** -24)).to(torch.float32)
