"""bench/host_time_layers.py on the CPU (the Triton layers in Triton's interpreter): every layer runs and gets
a row, and a layer that fails is reported in its row while the others run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the script launches the Triton kernel")


SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "host_time_layers.py"
spec = importlib.util.spec_from_file_location("host_time_layers", SCRIPT)
layers_script = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = layers_script
spec.loader.exec_module(layers_script)


def run(tmp_path, *extra):
    assert layers_script.main(["--device", "cpu", "--numel", "1023", "--calls", "2", "--repeats", "1",
                               "--out", str(tmp_path), *extra]) == 0
    return json.loads((tmp_path / "host_time_layers.json").read_text())


def test_every_layer_is_timed(triton_interpreting, tmp_path):
    record = run(tmp_path, "--profile", "5")
    rows = record["rows"]
    assert [r["layer"] for r in rows] == list(layers_script.layers(4, layers_script.torch.device("cpu")))
    assert all(r["host_us"] > 0 and r["wall_us"] >= r["host_us"] and r["syncs"] == "-" for r in rows), rows
    assert "adadelta_fused/optimizer.py" in record["profile"]  # the step itself, among the top 5 lines
    assert "| Triton: Adadelta(flatten=True).step() |" in (tmp_path / "host_time_layers.md").read_text()


def test_a_failing_layer_is_reported_and_the_others_run(triton_interpreting, monkeypatch, tmp_path):
    shipped = layers_script.layers

    def with_a_failure(numel, device):
        calls = shipped(numel, device)
        calls["C++: op, torch.ops...adadelta_"] = lambda: (_ for _ in ()).throw(RuntimeError("planted"))
        return calls

    monkeypatch.setattr(layers_script, "layers", with_a_failure)
    rows = {r["layer"]: r for r in run(tmp_path)["rows"]}
    failed = rows.pop("C++: op, torch.ops...adadelta_")
    assert failed["syncs"] == "failed: planted" and math.isnan(failed["host_us"])
    assert all(r["host_us"] > 0 for r in rows.values())


def test_stubbed_kernels_leave_the_params_alone(triton_interpreting, monkeypatch, tmp_path):
    """--stub-kernels: the Triton layers run without launching anything (the step's params keep their values)."""
    from adadelta_fused import Adadelta, triton_interpreter

    monkeypatch.setattr(triton_interpreter, "kernels", triton_interpreter.kernels)  # restored after the test
    record = run(tmp_path, "--stub-kernels")
    assert record["stub_kernels"] is True and all(r["host_us"] > 0 for r in record["rows"]), record["rows"]
    param = layers_script.torch.nn.Parameter(layers_script.torch.rand(1023))
    param.grad = layers_script.torch.rand(1023)
    before = param.detach().clone()
    Adadelta([param], backend="triton").step()
    assert layers_script.torch.equal(param.detach(), before)


def test_stubbed_kernels_are_for_the_cpu(capsys):
    with pytest.raises(SystemExit):
        layers_script.main(["--device", "cuda", "--stub-kernels"])
    assert "--stub-kernels is for --device cpu" in capsys.readouterr().err
