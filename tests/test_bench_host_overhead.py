"""The benchmark's host-overhead case (issue 12): its parsing, its arithmetic, which implementations it times,
and what a run writes. Structure and arithmetic only: no assert here depends on how fast anything ran."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
import torch

from adadelta_fused.bench import implementations as impls
from adadelta_fused.bench import sweep as sweep_module
from adadelta_fused.bench.__main__ import _config, _host_implementations, _implementations, build_parser, main
from adadelta_fused.bench.cases import Case, Ki, Mi, rotation_sets
from adadelta_fused.bench.host_overhead import DEFAULT_HOST_CASE, HostCase, HostRow, parse_host_case
from adadelta_fused.bench.timing import Measurement
from adadelta_fused.bench.traffic import StepConfig

from conftest import requires_extension

CPU = torch.device("cpu")


def measurement(*seconds: float) -> Measurement:
    return Measurement(seconds, steps_per_sample=1, first_call_seconds=seconds[0])


def run_cli(argv: list[str]) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    return stdout.getvalue()


@pytest.fixture
def tiny_rotation(monkeypatch):
    """A cache of 0 bytes: every case rotates the minimum of 2 parameter sets, so a tiny run builds few
    optimizers (a real cache would ask for 1024 sets of a tiny case)."""
    monkeypatch.setattr(sweep_module, "last_level_cache_bytes", lambda device: 0)


def test_the_case_parses_and_pairs_many_params_with_one_of_the_same_elements():
    assert DEFAULT_HOST_CASE == parse_host_case("4096x256") == HostCase(4096, 256)
    assert DEFAULT_HOST_CASE.many == Case(1 * Mi, 4096) and DEFAULT_HOST_CASE.one == Case(1 * Mi, 1)
    assert parse_host_case(" 8 x 1Ki ") == HostCase(8, 1 * Ki)
    assert DEFAULT_HOST_CASE.label() == "4096 x 256"
    assert build_parser().parse_args([]).host_overhead == DEFAULT_HOST_CASE
    assert build_parser().parse_args(["--host-overhead", "off"]).host_overhead is None
    for text, message in (("4096", "expected PARAMSxELEMENTS"), ("1x256", "at least 2 params"), ("3x0", "invalid count")):
        with pytest.raises(ValueError, match=message):
            parse_host_case(text)


def test_host_time_per_param_is_the_difference_of_medians_over_the_params_beyond_the_first():
    row = HostRow(
        HostCase(4, 16), "cpp", "", many=measurement(9e-6, 7e-6, 8e-6), one=measurement(2e-6, 5e-6, 1e-6),
        rotation_sets=2,
    )
    assert row.seconds_per_param == pytest.approx((8e-6 - 2e-6) / 3)


SWEEP_NAMES = ("cpp", "triton", "reference", "torch-forloop", "torch-foreach")


@pytest.mark.parametrize(
    "argv, expected",
    [
        # fp32 on a CPU: the sweep's rows, our flat steps, and fused AdamW, which the CPU's fp32 sweep leaves out
        ([], ["cpp", "triton", "reference", "cpp-flat", "triton-flat", "torch-forloop", "torch-foreach",
              "torch-fused-adamw"]),
        # flatten=True keeps state in the param dtype only
        (["--dtype", "bf16", "--state-dtype", "fp32"], [*SWEEP_NAMES, "torch-fused-adamw"]),
        # names given: those and no others
        (["--backends", *SWEEP_NAMES], list(SWEEP_NAMES)),
    ],
)
def test_the_case_times_our_flat_steps_and_fused_adamw_unless_names_are_given(argv, expected):
    parser = build_parser()
    args = parser.parse_args(["--device", "cpu", *argv])
    assert list(_host_implementations(args, _config(parser, args), SWEEP_NAMES)) == expected


def test_a_default_cpu_run_times_fused_adamw_in_the_case_only():
    parser = build_parser()
    args = parser.parse_args(["--device", "cpu", "--no-compile"])
    config = _config(parser, args)
    names = _implementations(parser, args, CPU, config)
    assert impls.TORCH_FUSED_ADAMW not in names  # the CPU's fp32 sweep compares with torch's Adadelta
    assert _host_implementations(args, config, names)[-1] == impls.TORCH_FUSED_ADAMW


@requires_extension
def test_a_run_writes_both_medians_and_their_difference_per_param(tmp_path, tiny_rotation):
    names = ["cpp", "cpp-flat", "torch-foreach", "torch-fused-adamw"]
    stdout = run_cli(["--device", "cpu", "--threads", "1", "--repeats", "3", "--host-overhead-only",
                      "--host-overhead", "3x16", "--backends", *names, "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    (csv_path,) = tmp_path.glob("*-host-overhead.csv")
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".csv", ".json"]  # no sweep: no sweep CSV, no plot
    document = json.loads(json_path.read_text())
    assert document["rows"] == [] and document["options"]["cases"] == []
    host = document["host_overhead"]
    assert (host["params"], host["param_numel"], host["implementations"], host["skipped"]) == (3, 16, names, [])
    assert [row["implementation"] for row in host["rows"]] == names
    for row in host["rows"]:
        assert len(row["many_per_step_s"]) == len(row["one_per_step_s"]) == row["samples"] == 3
        assert row["many_median_s"] == pytest.approx(sorted(row["many_per_step_s"])[1])
        assert row["one_median_s"] == pytest.approx(sorted(row["one_per_step_s"])[1])
        assert row["host_us_per_param"] == pytest.approx((row["many_median_s"] - row["one_median_s"]) / 2 * 1e6)
        assert row["rotation_sets"] == 2
    with csv_path.open() as handle:
        records = list(csv.DictReader(handle))
    assert [r["implementation"] for r in records] == names
    for record, row in zip(records, host["rows"], strict=True):
        assert float(record["host_us_per_param"]) == pytest.approx(row["host_us_per_param"])
        assert record["torch"] == torch.__version__ and int(record["torch_threads"]) == 1 and record["device_name"]
    assert "host overhead: 3 x 16 elements against one param of 48, rotating 2 parameter sets" in stdout
    assert "(48 x 3 - 48 x 1) / 2" in stdout
    table = {line.split()[0]: line.split() for line in stdout.splitlines() if line.split()[:1] and line.split()[0] in names}
    assert {name: float(cells[-1]) for name, cells in table.items()} == pytest.approx(
        {row["implementation"]: row["host_us_per_param"] for row in host["rows"]}, abs=1e-3)


@requires_extension
def test_the_sweep_caps_a_requested_rotation(tmp_path, monkeypatch):
    made = []
    original = sweep_module.make_param_sets
    monkeypatch.setattr(sweep_module, "make_param_sets", lambda case, config, device, count, *args, **kwargs: (
        made.append((case.tensors, count)), original(case, config, device, count, *args, **kwargs))[1])
    run_cli(["--device", "cpu", "--threads", "1", "--repeats", "1", "--host-overhead-only", "--host-overhead",
             "4096x1", "--host-overhead-sets", "100000", "--backends", "cpp", "--out", str(tmp_path)])
    assert made == [(4096, 16), (1, 16)]


def test_a_requested_rotation_is_capped_like_every_other():
    config = StepConfig()
    assert rotation_sets(Case(4096 * 16, 4096), config, 0, requested=1) == 1
    assert rotation_sets(Case(4096, 4096), config, 0, requested=100_000) == 16  # 65,536 tensors per role
    assert rotation_sets(Case(4096, 4096), config, 0) == 2  # no cache to span: the minimum


@requires_extension
def test_one_set_steps_the_same_params_every_sample(tmp_path, monkeypatch):
    made = []
    original = sweep_module.make_param_sets

    def recording(case, config, device, count, *args, **kwargs):
        made.append((case.tensors, count))
        return original(case, config, device, count, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "make_param_sets", recording)
    rounds = []
    interleaved = sweep_module.time_interleaved

    def recording_rounds(implementations, device, **kwargs):
        rounds.append((len(implementations), kwargs.get("lead_step", False)))
        return interleaved(implementations, device, **kwargs)

    monkeypatch.setattr(sweep_module, "time_interleaved", recording_rounds)
    stdout = run_cli(["--device", "cpu", "--threads", "1", "--repeats", "2", "--host-overhead-only",
                      "--host-overhead", "3x16", "--host-overhead-sets", "1", "--backends", "cpp", "--out",
                      str(tmp_path)])
    assert made == [(3, 1), (1, 1)]  # the many-param and the one-param case, one set each
    assert rounds == [(2, True)]  # one implementation: its two steps in a round of their own, behind lead steps
    host = json.loads(next(tmp_path.glob("*.json")).read_text())["host_overhead"]
    (row,) = host["rows"]
    assert row["rotation_sets"] == 1 and host["requested_sets"] == 1
    assert ("host overhead: 3 x 16 elements against one param of 48, the same params every step, each "
            "implementation timed alone") in stdout


@requires_extension
def test_the_case_follows_the_sweep_in_a_default_shaped_run_and_reports_its_skips(tmp_path, tiny_rotation):
    # 65 tensors: past the count up to which torch.compile runs without --compile-all, so nothing compiles
    stdout = run_cli(["--device", "cpu", "--threads", "1", "--repeats", "1", "--sizes", "65", "--tensors", "65",
                      "--host-overhead", "65x1", "--backends", "cpp", "torch-compile", "--out", str(tmp_path)])
    document = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [(row["tensors"], row["implementation"]) for row in document["rows"]] == [(65, "cpp")]  # the sweep's case
    host = document["host_overhead"]
    assert [row["implementation"] for row in host["rows"]] == ["cpp"]
    assert host["skipped"] == [{"implementation": "torch-compile",
                                "reason": "compiling 65 tensors takes minutes; add --compile-all"}]
    assert "skipped torch-compile: compiling 65 tensors" in stdout
    assert len(list(tmp_path.glob("*.csv"))) == 2 and len(list(tmp_path.glob("*-host-overhead.csv"))) == 1
