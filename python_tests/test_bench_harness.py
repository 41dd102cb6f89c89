"""benchmarks/harness.py helpers that run without a GPU: the nvidia-smi sample parser behind
bench_decoder.py --clocks, and the sampler's no-GPU behaviour (no samples, NaN medians)."""
import math
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
harness = pytest.importorskip("benchmarks.harness")


def test_parse_gpu_samples_medians_and_skips_junk():
    lines = ["1980, 612.3", "1755, 700.1", "[N/A], 650", "", "1830, 650.0", "garbage"]
    mhz, watts, n = harness.parse_gpu_samples(lines)
    assert (mhz, watts, n) == (1830.0, 650.0, 3)


def test_parse_gpu_samples_nothing():
    mhz, watts, n = harness.parse_gpu_samples([])
    assert n == 0 and math.isnan(mhz) and math.isnan(watts)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_sampler_without_gpu_reports_no_samples():
    with harness.GpuSampler() as sampler:
        pass
    mhz, watts, n = sampler.median()
    assert n == 0 and math.isnan(mhz) and math.isnan(watts)
