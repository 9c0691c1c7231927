"""The sparse op's CUDA and compiled Triton kernels on a real GPU, against the sparse reference on the CPU: bit
for bit, with the unlisted rows poisoned (tests/test_sparse_kernels.py's cases). Skipped cleanly without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from adadelta_fused import Adadelta, _extension

from test_sparse_kernels import DTYPE_PAIRS, SCALARS, _assert_cases_equal, _clone, _op_args, _pair_id, _reference, \
    make_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def _on(case, device):
    return {name: t.to(device) for name, t in case.items()}


def _scalars_on(scalars, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in scalars.items()}


def _run(kernel: str, case, scalars, step, update):
    args = _op_args(case, scalars, step, update=update)
    if kernel == "cuda":
        if not _extension.has_cuda_kernel():
            pytest.skip("the extension was built without its CUDA sources")
        torch.ops.adadelta_fused.sparse_adadelta_(*args)
    else:
        pytest.importorskip("triton")
        from adadelta_fused import sparse_triton

        sparse_triton.triton_sparse_adadelta_(*args)
    torch.cuda.synchronize()


@pytest.mark.parametrize("kernel", ["cuda", "triton"])
@pytest.mark.parametrize("pair", DTYPE_PAIRS, ids=_pair_id)
@pytest.mark.parametrize("shape", [(1,), (64,), (5, 29), (1000,)], ids=str)
@pytest.mark.parametrize("update", [True, False], ids=["update", "catch_up"])
def test_gpu_kernel_matches_reference(kernel, pair, shape, update, generator):
    case = make_case(301, shape, *pair, listed=150, step=500, generator=generator)
    want = _clone(case)
    _reference(want, SCALARS["default"], 500, update=update)
    got = _on(case, "cuda")
    _run(kernel, got, SCALARS["default"], 500, update)
    _assert_cases_equal(_on(got, "cpu"), want)


@pytest.mark.parametrize("kernel", ["cuda", "triton"])
@pytest.mark.parametrize("feature", list(SCALARS))
def test_gpu_features(kernel, feature, generator):
    case = make_case(41, (7,), torch.float32, torch.float32, listed=19, step=300, generator=generator)
    want = _clone(case)
    _reference(want, SCALARS[feature], 300)
    got = _on(case, "cuda")
    _run(kernel, got, _scalars_on(SCALARS[feature], "cuda"), 300, True)
    _assert_cases_equal(_on(got, "cpu"), want)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_optimizer_on_cuda_matches_dense_steps(backend, generator):
    """On a GPU the densified gradient's sums (atomics) need not round as coalesce() does: fp32 tolerance."""
    embedding = torch.nn.Embedding(1000, 64, sparse=True).cuda()
    twin = torch.nn.Embedding(1000, 64, sparse=False).cuda()
    twin.load_state_dict(embedding.state_dict())
    opt = Adadelta(embedding.parameters(), backend=backend)
    twin_opt = Adadelta(twin.parameters(), backend=backend)
    for _ in range(40):
        index = torch.randint(0, 1000, (300,), generator=generator).cuda()
        for module, o in ((embedding, opt), (twin, twin_opt)):
            o.zero_grad()
            module(index).square().sum().backward()
            o.step()
    torch.testing.assert_close(embedding.weight, twin.weight, rtol=2e-5, atol=2e-6)
