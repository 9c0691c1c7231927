"""bench/triton_launch_sweep.py in Triton's interpreter: it checks every shape against the shipped one before
timing it, refuses a shape that skips elements, and writes one row per dtype and shape."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the sweep launches the Triton kernel")

from adadelta_fused import backends as registry  # noqa: E402
from adadelta_fused.bench.bandwidth import ProbeResult  # noqa: E402
from adadelta_fused.bench.traffic import StepConfig  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "triton_launch_sweep.py"
spec = importlib.util.spec_from_file_location("triton_launch_sweep", SCRIPT)
sweep = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sweep  # dataclasses look their module up there
spec.loader.exec_module(sweep)

CPU = torch.device("cpu")
SHIPPED = sweep.Shape(2048, 4)


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    registry._load.cache_clear()
    registry._auto.cache_clear()
    yield
    registry._load.cache_clear()
    registry._auto.cache_clear()


@pytest.mark.parametrize("config", sweep.CONFIGS, ids=lambda c: str(c.param_dtype))
def test_a_smaller_block_computes_the_shipped_bits(interpreter, config):
    sweep.check_shape(config, sweep.Shape(1024, 2), SHIPPED, CPU, interpret=True)


def test_a_shape_that_skips_elements_is_refused(interpreter, monkeypatch):
    monkeypatch.setattr(sweep.triton, "cdiv", lambda numel, block: 1)  # one program: most elements unstepped
    with pytest.raises(RuntimeError, match=r"BLOCK=1024, 4 warps: params differ from the shipped shape's"):
        sweep.check_shape(StepConfig(torch.float32), sweep.Shape(1024, 4), SHIPPED, CPU, interpret=True)


def test_rows_for_every_dtype_and_shape(interpreter, monkeypatch, tmp_path):
    probes = [ProbeResult(name, "", 8, 2**20, 1e-4) for name in ("copy", "triad", "axpy")]
    monkeypatch.setattr(sweep, "measure_bandwidth", lambda device: probes)  # the real probes take seconds
    assert sweep.main(["--numel", "4097", "--blocks", "1024", "2048", "--warps", "4", "--repeats", "1",
                       "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "triton_launch_sweep.json").read_text())
    assert record["interpreted"] is True
    rows = [(r["dtype"], r["block"], r["warps"], r["shipped"]) for r in record["rows"]]
    assert rows == [("fp32", 1024, 4, False), ("fp32", 2048, 4, True), ("bf16", 1024, 4, False), ("bf16", 2048, 4, True)]
    assert all(r["median_ms"] > 0 and r["gbps"] > 0 for r in record["rows"])
    assert "| fp32 (shipped) | 2048 | 4 |" in (tmp_path / "triton_launch_sweep.md").read_text()


def test_a_block_that_is_not_a_power_of_two_is_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--blocks", "1000"])
    assert "--blocks: 1000 is not a power of two of at least 16" in capsys.readouterr().err
