"""bench/triton_launch_sweep.py in Triton's interpreter: it checks every shape against the shipped one before
timing it, refuses a shape that skips elements, reports a shape that fails and runs the others, and writes one
row per dtype and shape."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the sweep launches the Triton kernel")

from adadelta_fused.bench.bandwidth import ProbeResult  # noqa: E402
from adadelta_fused.bench.traffic import StepConfig  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "triton_launch_sweep.py"
spec = importlib.util.spec_from_file_location("triton_launch_sweep", SCRIPT)
sweep = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sweep  # dataclasses look their module up there
spec.loader.exec_module(sweep)

CPU = torch.device("cpu")
SHIPPED = sweep.Shape(1024, 4)
PROBES = [ProbeResult(name, "", 8, 2**20, 1e-4) for name in ("copy", "triad", "axpy")]


@pytest.mark.parametrize("config", sweep.CONFIGS, ids=lambda c: str(c.param_dtype))
def test_a_smaller_block_computes_the_shipped_bits(triton_interpreting, config):
    sweep.check_shape(config, sweep.Shape(512, 2), SHIPPED, CPU, interpret=True)


@pytest.mark.parametrize("programs", [
    pytest.param(lambda numel, block: 1, id="first_program_only"),
    pytest.param(lambda numel, block: -(-numel // block) - 1, id="all_but_the_last_program"),
])
def test_a_shape_that_skips_elements_is_refused(triton_interpreting, monkeypatch, programs):
    monkeypatch.setattr(sweep.triton, "cdiv", programs)  # the grid of both shapes: some elements unstepped
    with pytest.raises(RuntimeError, match=r"BLOCK=512, 4 warps: params differ from the shipped shape's at"):
        sweep.check_shape(StepConfig(torch.float32), sweep.Shape(512, 4), SHIPPED, CPU, interpret=True)


def test_a_shape_that_fails_is_reported_and_the_others_run(triton_interpreting, monkeypatch, tmp_path):
    shipped_check = sweep.check_shape

    def check(config, shape, *args, **kwargs):
        if shape.block == 512:
            raise RuntimeError("planted")
        shipped_check(config, shape, *args, **kwargs)

    monkeypatch.setattr(sweep, "check_shape", check)
    monkeypatch.setattr(sweep, "measure_bandwidth", lambda device: PROBES)
    assert sweep.main(["--numel", "4097", "--blocks", "512", "1024", "--warps", "4", "--repeats", "1",
                       "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "triton_launch_sweep.json").read_text())
    assert [(r["dtype"], r["block"]) for r in record["rows"]] == [("fp32", 1024), ("bf16", 1024)]
    assert [(f["dtype"], f["block"], f["error"]) for f in record["failures"]] == [
        ("fp32", 512, "RuntimeError: planted"), ("bf16", 512, "RuntimeError: planted")]
    table = (tmp_path / "triton_launch_sweep.md").read_text()
    assert "- fp32 BLOCK=512 warps=4 not timed: RuntimeError: planted" in table


def test_rows_for_every_dtype_and_shape(triton_interpreting, monkeypatch, tmp_path):
    monkeypatch.setattr(sweep, "measure_bandwidth", lambda device: PROBES)  # the real probes take seconds
    assert sweep.main(["--numel", "4097", "--blocks", "1024", "2048", "--warps", "4", "--repeats", "1",
                       "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "triton_launch_sweep.json").read_text())
    assert record["interpreted"] is True
    rows = [(r["dtype"], r["block"], r["warps"], r["shipped"]) for r in record["rows"]]
    assert rows == [
        ("fp32", 1024, 4, True), ("fp32", 2048, 4, False), ("bf16", 1024, 4, True), ("bf16", 2048, 4, False)
    ]
    assert all(r["median_ms"] > 0 and r["gbps"] > 0 for r in record["rows"])
    assert "| fp32 (shipped) | 1024 | 4 |" in (tmp_path / "triton_launch_sweep.md").read_text()


def test_blocks_and_warps_that_are_not_powers_of_two_are_argument_errors(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--blocks", "1000"])
    assert "--blocks: 1000 is not a power of two of at least 16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--warps", "3"])
    assert "--warps: 3 is not a power of two" in capsys.readouterr().err
