"""The examples run as a user would run them."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("flags", [[], ["--bf16"], ["--bf16", "--stochastic"]], ids=["fp32", "bf16_master", "bf16_sr"])
def test_train_mlp_runs_and_learns(flags):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_mlp.py"), "--steps", "50", *flags],
        capture_output=True, text=True, timeout=300, check=True,
    )
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 2
    assert losses[-1] < losses[0], result.stdout
