"""Below the tested floor (torch 2.11, triton 3.6), importing adadelta_fused or asking for Triton says so."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from adadelta_fused._requirements import TORCH_FLOOR, TRITON_FLOOR, check_torch, too_old


@pytest.mark.parametrize("version", ["2.11.0", "2.11.0+cu130", "2.14.1", "3.0.0a0+git1234"])
def test_torch_at_or_above_the_floor_passes(version):
    check_torch(version)


@pytest.mark.parametrize("version", ["2.10.1", "2.4.0+cpu", "1.13.1"])
def test_older_torch_is_refused_with_the_floor_and_the_version(version):
    expected = rf"needs torch>=2\.11, the oldest it is tested with; found torch {re.escape(version)}"
    with pytest.raises(ImportError, match=expected):
        check_torch(version)


def test_triton_floor():
    assert TORCH_FLOOR == (2, 11) and TRITON_FLOOR == (3, 6)
    assert too_old("triton", "3.6.0", TRITON_FLOOR) is None
    assert too_old("triton", "3.5.1", TRITON_FLOOR) == (
        "adadelta_fused needs triton>=3.6, the oldest it is tested with; found triton 3.5.1"
    )


def test_import_below_the_floor_fails_clearly():
    code = "import torch; torch.__version__ = '2.10.0'; import adadelta_fused"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ImportError: adadelta_fused needs torch>=2.11" in done.stderr
