"""Shared fixtures: the devices each op is tested on (CPU always; CUDA when a GPU is present and
the package carries CUDA kernels)."""
import pytest
import torch

import jetspec_ext

HAS_CUDA = torch.cuda.is_available() and jetspec_ext.cuda_compiled()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for the module (tiny matmuls: threads only add contention on the 2-core CI
    box). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
