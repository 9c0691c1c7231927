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


def _torchrun(ranks: int, *flags: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
         str(EXAMPLES / "fsdp2_train.py"), *flags],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_fsdp2_recipe_trains_saves_and_resumes_on_another_world_size(tmp_path):
    """The README's torchrun commands, shortened: 2 ranks train and save; 1 rank resumes from the save."""
    checkpoint = str(tmp_path / "checkpoint")
    first = _torchrun(2, "--steps", "21", "--checkpoint", checkpoint)
    losses = [float(line.split()[-1]) for line in first.splitlines() if line.startswith("step")]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.5, first
    assert "saved" in first and "DTensor shards (torch.float32 master copies, placements (Shard(dim=0),))" in first
    second = _torchrun(1, "--steps", "1", "--checkpoint", checkpoint, "--resume")
    assert "at step 21 on 1 ranks" in second, second
    resumed = [float(line.split()[-1]) for line in second.splitlines() if line.startswith("step")]
    assert resumed and resumed[0] < losses[0] - 0.5, "the loaded model is the trained one"
