"""The benchmark: the CLI end to end on a tiny sweep, its flag errors, and the byte and launch model checked
against the code that really moves the bytes (our reference spec, and the installed torch's foreach step)."""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.optim.adadelta import _multi_tensor_adadelta
from torch.utils._python_dispatch import TorchDispatchMode

from adadelta_fused.backends import BACKEND_NAMES
from adadelta_fused.bench import implementations as impls
from adadelta_fused.bench import timing
from adadelta_fused.bench.__main__ import _config, _implementations, build_parser, main
from adadelta_fused.bench.cases import Case, Ki, Mi, format_count, parse_count, rotation_sets, set_bytes, sweep
from adadelta_fused.bench.timing import Measurement, time_interleaved, time_steps
from adadelta_fused.bench.traffic import (
    DTYPES_BY_NAME,
    StepConfig,
    all_configs,
    extension_launches,
    step_traffic,
    torch_foreach_launches,
    torch_foreach_passes,
    torch_foreach_traffic,
)
from adadelta_fused.contract import GradMode, StepScalars
from adadelta_fused.reference import adadelta_step_reference_

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

# One thread: on a shared 2-core machine, two OpenMP threads wait on each other for whole scheduler
# slices, and a tiny sweep would take minutes instead of seconds.
# The host-overhead case has its own tests (test_bench_host_overhead.py); these time the sweep alone.
TINY_SWEEP = ["--device", "cpu", "--sizes", "4Ki", "16Ki", "--tensors", "3", "--repeats", "3",
              "--threads", "1", "--no-compile", "--host-overhead", "off"]
TINY_IMPLEMENTATIONS = ["cpp", "reference", "torch-forloop", "torch-foreach"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(argv: list[str]) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The results folder, stdout and stderr of a tiny sweep."""
    out = tmp_path_factory.mktemp("results")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        stdout = run_cli([*TINY_SWEEP, "--out", str(out)])
    return out, stdout, stderr.getvalue()


def only_file(directory: Path, suffix: str) -> Path:
    (path,) = directory.glob(f"*{suffix}")
    return path


# ---- the CLI end to end ----

def test_csv_has_one_positive_row_per_case_and_implementation(tiny_run):
    out, _, _ = tiny_run
    with only_file(out, ".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    cases = {(4095, 3), (16383, 3)}  # sizes round down to a multiple of the tensor count
    assert {(int(r["numel"]), int(r["tensors"]), r["implementation"]) for r in rows} == {
        (numel, tensors, name) for numel, tensors in cases for name in TINY_IMPLEMENTATIONS
    }
    for row in rows:
        median, p10, p90 = float(row["median_s"]), float(row["p10_s"]), float(row["p90_s"])
        assert 0 < p10 <= median <= p90
        assert int(row["samples"]) == 3
        assert int(row["bytes_per_element"]) == 28
        gbps = float(row["gbps"])
        assert gbps == pytest.approx(28 * int(row["numel"]) / median / 1e9)
        assert float(row["percent_of_bandwidth"]) == pytest.approx(100 * gbps / float(row["bandwidth_gbps"]))
        assert float(row["speedup_vs_torch_foreach"]) > 0 and float(row["speedup_vs_torch_forloop"]) > 0
        assert row["speedup_vs_torch_compile"] == ""  # --no-compile
        # every set of the rotation touched, and together at least 2 of them
        assert int(row["rotation_sets"]) >= 2
        assert row["device_name"] and int(row["cpu_cores"]) >= 1 and int(row["torch_threads"]) == 1
        assert row["torch"] == torch.__version__
        assert re.fullmatch(r"[0-9a-f]{40}", row["git_sha"])
        assert json.loads(row["extension"])["extension"]
    foreach_rows = [r for r in rows if r["implementation"] == "torch-foreach"]
    assert all(float(r["speedup_vs_torch_foreach"]) == 1.0 for r in foreach_rows)


def test_json_records_hardware_versions_probes_and_samples(tiny_run):
    out, _, _ = tiny_run
    document = json.loads(only_file(out, ".json").read_text())
    metadata = document["metadata"]
    for key in ("device_name", "cpu_cores", "torch", "triton", "python", "extension", "git", "backends"):
        assert key in metadata
    assert metadata["arguments"][:2] == ["--device", "cpu"]
    probes = {p["probe"]: p for p in document["bandwidth"]}
    assert {name: p["bytes_per_element"] for name, p in probes.items()} == {"copy": 8, "triad": 12, "axpy": 12}
    assert all(p["gbps"] > 0 for p in probes.values())
    best = max(probes.values(), key=lambda p: p["gbps"])
    assert document["reference_bandwidth"] == best["probe"]
    assert document["probe_rounds"] == 2 + 1  # before each of the 2 cases, and at the end
    for row in document["rows"]:
        assert len(row["per_step_s"]) == 3 and all(s > 0 for s in row["per_step_s"])
        assert row["bandwidth_gbps"] == pytest.approx(best["gbps"])


def test_png_is_a_real_plot(tiny_run):
    out, _, _ = tiny_run
    data = only_file(out, ".png").read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (990, 605)  # 9 x 5.5 inches at 110 dpi
    assert len(data) > 20_000  # axes, four lines, three probes, legend: far more than an empty canvas


def test_table_shows_every_row_and_the_bandwidth_line(tiny_run):
    _, stdout, _ = tiny_run
    assert "bandwidth: copy (a = b)" in stdout and "triad (a = b + s*c)" in stdout and "axpy (a += s*b)" in stdout
    header = next(line for line in stdout.splitlines() if line.lstrip().startswith("size"))
    for column in ("median ms", "p10-p90 ms", "GB/s", "% bw", "vs forloop", "vs foreach"):
        assert column in header
    table_rows = [line for line in stdout.splitlines() if re.match(r"\s*\d+(Ki)?\*?\s+\d+\s+\S", line)]
    assert len(table_rows) == 8
    assert "wrote " in stdout and ".png" in stdout


def test_progress_bar_counts_every_case_and_probe_round_on_stderr_only(tiny_run):
    _, stdout, stderr = tiny_run
    assert "bench: 100%" in stderr and "| 5/5 " in stderr  # 2 cases, a probe round before each and at the end
    assert "bench:" not in stdout and "\r" not in stdout


def test_png_is_skipped_with_a_message_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    stdout = run_cli(["--device", "cpu", "--host-overhead", "off", "--sizes", "1Ki", "--tensors", "1", "--repeats", "1", "--threads", "1",
                      "--backends", "cpp", "--out", str(tmp_path)])
    assert "PNG skipped: matplotlib is not installed" in stdout
    assert not list(tmp_path.glob("*.png"))
    assert len(list(tmp_path.glob("*.csv"))) == 1


def test_mixed_precision_rows_are_credited_with_the_bytes_they_move(tmp_path):
    run_cli(["--device", "cpu", "--host-overhead", "off", "--dtype", "bf16", "--state-dtype", "fp32", "--master-weights", "--sizes", "2Ki",
             "--tensors", "2", "--repeats", "2", "--threads", "1", "--backends", "cpp", "torch-foreach",
             "--out", str(tmp_path)])
    with only_file(tmp_path, ".csv").open() as handle:
        rows = {row["implementation"]: row for row in csv.DictReader(handle)}
    # ours runs the asked-for layout (fp32 state and master: 28 B); torch keeps bf16 state (14 B)
    assert (rows["cpp"]["state_dtype"], rows["cpp"]["master_weights"], rows["cpp"]["bytes_per_element"]) == (
        "fp32", "True", "28")
    assert (rows["torch-foreach"]["state_dtype"], rows["torch-foreach"]["bytes_per_element"]) == ("bf16", "14")


@pytest.mark.parametrize("dtype, listed", [("bf16", True), ("fp16", True), ("fp32", False)])
def test_cpu_low_precision_runs_time_torch_fused_adamw_by_default(dtype, listed):
    parser = build_parser()
    args = parser.parse_args(["--device", "cpu", "--dtype", dtype, "--no-compile"])
    assert (impls.TORCH_FUSED_ADAMW in _implementations(parser, args, CPU, _config(parser, args))) == listed


def test_torch_fused_adamw_runs_on_cpu_in_bf16_with_the_same_bytes(tmp_path):
    run_cli(["--device", "cpu", "--host-overhead", "off", "--dtype", "bf16", "--sizes", "2Ki", "--tensors", "2", "--repeats", "2",
             "--threads", "1", "--backends", "cpp", "torch-fused-adamw", "--out", str(tmp_path)])
    with only_file(tmp_path, ".csv").open() as handle:
        rows = {row["implementation"]: row for row in csv.DictReader(handle)}
    assert rows["torch-fused-adamw"]["bytes_per_element"] == rows["cpp"]["bytes_per_element"] == "14"


def test_traffic_runs_as_a_module_and_predicts_the_h100_step():
    completed = subprocess.run(
        [sys.executable, "-m", "adadelta_fused.bench", "--traffic", "--dtype", "fp32", "--numel", "1Gi",
         "--bandwidth", "3.0e12"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
    )
    lines = completed.stdout.splitlines()
    ours = next(line for line in lines if line.startswith("fp32 params, fp32 state, grad keep"))
    # read, written, B/elem, 108/28 less than torch, launches for 1 (the flat kernel) and 4096 tensors,
    # 1 Gi x 28 B / 3.0e12 B/s
    assert ours.split()[-9:] == ["16", "12", "28", "3.86x", "less", "1", "16", "10.0", "ms"]
    torch_row = next(line for line in lines if line.startswith("torch.optim.Adadelta foreach, fp32"))
    assert " 108 " in torch_row and "38.7 ms" in torch_row


# ---- flag errors ----

@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--sizes", "12Xi"], "--sizes"),
        (["--sizes", "0"], "--sizes"),
        (["--tensors", "-4"], "--tensors"),
        (["--dtype", "fp8"], "--dtype"),
        (["--repeats", "0"], "--repeats"),
        (["--backends", "tensorflow"], "--backends"),
        (["--dtype", "fp64", "--state-dtype", "bf16"], "--state-dtype"),
        (["--dtype", "fp32", "--master-weights"], "--master-weights"),
        (["--device", "tpu"], "--device"),
        (["--device", "cpu", "--numel", "1Mi"], "--numel"),
        (["--traffic", "--bandwidth", "-3"], "--bandwidth"),
        (["--no-compile", "--compile-all"], "--compile-all"),
        (["--no-compile", "--backends", "torch-compile"], "--no-compile"),
        (["--device", "cpu", "--sizes", "2", "--tensors", "4"], "--sizes/--tensors"),
        (["--host-overhead", "1x256"], "--host-overhead"),
        (["--host-overhead", "4096"], "--host-overhead"),
        (["--device", "cpu", "--host-overhead", "off", "--host-overhead-only"], "--host-overhead-only"),
        (["--device", "cpu", "--host-overhead", "off", "--host-overhead-sets", "1"], "--host-overhead-sets"),
        (["--host-overhead-sets", "0"], "--host-overhead-sets"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_device_without_cuda_is_a_flag_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_an_unavailable_backend_is_a_flag_error_with_the_reason(capsys):
    unavailable = [n for n in BACKEND_NAMES if impls.unavailable_reason(n, CPU)]
    if not unavailable:
        pytest.skip("every backend can run on this CPU")
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--backends", unavailable[0]])
    assert f"--backends {unavailable[0]}: " in capsys.readouterr().err


# ---- the byte model ----

@pytest.mark.parametrize(
    "param, state, master, mode, read, written",
    [
        # fp32: read p, g, square_avg, acc_delta (4 x 4); write p, square_avg, acc_delta (3 x 4)
        ("fp32", "fp32", False, GradMode.KEEP, 16, 12),
        # zero and unscale also store into the gradient: + 4 written
        ("fp32", "fp32", False, GradMode.ZERO, 16, 16),
        ("fp32", "fp32", False, GradMode.UNSCALE, 16, 16),
        # the same four reads and three writes, 2 bytes each
        ("bf16", "bf16", False, GradMode.KEEP, 8, 6),
        # bf16 p and g (2 + 2 read, 2 written) with fp32 accumulators (8 read, 8 written)
        ("bf16", "fp32", False, GradMode.KEEP, 12, 10),
        # with an fp32 master the master is read (4) instead of the bf16 param, which is only written:
        # read g 2 + master 4 + accumulators 8 = 14; write p 2 + master 4 + accumulators 8 = 14. That is 28,
        # not 30: 30 would read the bf16 param too, which the update never does (or is the zero-grad case).
        ("bf16", "fp32", True, GradMode.KEEP, 14, 14),
        ("bf16", "fp32", True, GradMode.ZERO, 14, 16),
        ("fp64", "fp64", False, GradMode.KEEP, 32, 24),
        ("fp16", "bf16", False, GradMode.KEEP, 8, 6),
        ("fp32", "bf16", False, GradMode.KEEP, 12, 8),
    ],
)
def test_bytes_per_element(param, state, master, mode, read, written):
    traffic = step_traffic(StepConfig(DTYPES_BY_NAME[param], DTYPES_BY_NAME[state], master, mode))
    assert (traffic.read, traffic.written, traffic.total) == (read, written, read + written)


class _BufferAccessRecorder(TorchDispatchMode):
    """Which of the named buffers each op reads, and which it writes (an out-of-place write such as
    ``copy_`` or ``zero_`` overwrites without reading)."""

    OVERWRITING_OPS = ("aten::copy_", "aten::zero_", "aten::fill_")

    def __init__(self, buffers: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = {t.data_ptr(): name for name, t in buffers.items()}
        self.read: set[str] = set()
        self.written: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for argument, value in zip(func._schema.arguments, args):
            if not isinstance(value, torch.Tensor) or value.data_ptr() not in self.names:
                continue
            name = self.names[value.data_ptr()]
            if argument.alias_info is not None and argument.alias_info.is_write:
                self.written.add(name)
                if func.name() not in self.OVERWRITING_OPS:
                    self.read.add(name)
            else:
                self.read.add(name)
        return func(*args, **kwargs)


@pytest.mark.parametrize("config", list(all_configs()), ids=StepConfig.label)
def test_byte_model_matches_what_the_reference_spec_reads_and_writes(config):
    """The normative reference touches exactly the buffers the model counts, and nothing else."""
    n = 8
    buffers = {
        "param": torch.randn(n).to(config.param_dtype),
        "grad": torch.randn(n).to(config.param_dtype),
        "square_avg": torch.rand(n).add(0.5).to(config.state_dtype),
        "acc_delta": torch.rand(n).add(0.5).to(config.state_dtype),
    }
    if config.master_weights:
        buffers["master"] = buffers["param"].float()
    scalars = StepScalars(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, grad_mode=config.grad_mode,
                          grad_scale=torch.ones(1) if config.grad_mode == GradMode.UNSCALE else None)
    recorder = _BufferAccessRecorder(buffers)
    with recorder:
        adadelta_step_reference_(
            [buffers["param"]], [buffers["grad"]], [buffers["square_avg"]], [buffers["acc_delta"]],
            [buffers["master"]] if config.master_weights else None, scalars,
        )
    size = {name: t.element_size() for name, t in buffers.items()}
    traffic = step_traffic(config)
    assert traffic.read == sum(size[name] for name in recorder.read)
    assert traffic.written == sum(size[name] for name in recorder.written)


# torch's foreach step, counted by hand from torch/optim/adadelta.py (_multi_tensor_adadelta, default
# hyperparameters): (op, distinct buffers read, buffers written, tensor lists).
TORCH_FOREACH_BY_HAND = [
    ("_foreach_mul_.Scalar", 1, 1, 1),      # square_avgs *= rho
    ("_foreach_addcmul_.Scalar", 2, 1, 3),  # square_avgs += (1 - rho) * grads * grads
    ("_foreach_add.Scalar", 1, 1, 2),       # std = square_avgs + eps
    ("_foreach_sqrt_", 1, 1, 1),            # std = sqrt(std)
    ("_foreach_add.Scalar", 1, 1, 2),       # deltas = acc_deltas + eps
    ("_foreach_sqrt_", 1, 1, 1),            # deltas = sqrt(deltas)
    ("_foreach_div_.List", 2, 1, 2),        # deltas /= std
    ("_foreach_mul_.List", 2, 1, 2),        # deltas *= grads
    ("_foreach_mul_.Scalar", 1, 1, 1),      # acc_deltas *= rho
    ("_foreach_addcmul_.Scalar", 2, 1, 3),  # acc_deltas += (1 - rho) * deltas * deltas
    ("_foreach_add_.List", 2, 1, 2),        # params += -lr * deltas
]


def test_torch_foreach_passes_traced_from_the_installed_torch_match_a_hand_count():
    traced = [(p.op, p.buffers_read, p.buffers_written, p.tensor_lists) for p in torch_foreach_passes(torch.float32)]
    assert traced == TORCH_FOREACH_BY_HAND
    # and they are the foreach calls of the installed source, in its order
    source = inspect.getsource(_multi_tensor_adadelta)
    calls = iter(re.findall(r"torch\.(_foreach_\w+)\(", source))
    assert all(any(call == op.split(".")[0] for call in calls) for op, *_ in traced)


def test_torch_foreach_moves_108_bytes_per_fp32_element_in_11_passes():
    traffic = torch_foreach_traffic(torch.float32)
    assert (traffic.read, traffic.written, traffic.total) == (64, 44, 108)  # 27 buffer sweeps x 4 bytes
    passes = torch_foreach_passes(torch.float32)
    assert len(passes) == 11
    # counting the repeated operand of the two addcmul_ passes separately gives the ~116 of issue 4
    assert 4 * sum(p.operands_read + p.buffers_written for p in passes) == 116
    assert torch_foreach_traffic(torch.bfloat16).total == 54
    assert torch_foreach_traffic(torch.float64).total == 216


def test_launch_counts():
    # one tensor (a flat buffer) is one launch of the flat kernel, whatever its size
    assert extension_launches([2**30]) == 1
    assert extension_launches([0]) == 0
    # 1 Gi elements in two tensors = 16384 chunks of 64 Ki; 2048 per launch
    assert extension_launches([2**29, 2**29]) == 8
    # 4096 tensors of 8 Ki: one chunk each; 256 tensors per launch
    assert extension_launches([8 * Ki] * 4096) == 16
    assert extension_launches([0, 0]) == 0
    assert extension_launches([0, 5, 0]) == 1
    assert extension_launches([1] * 257) == 2
    # a tensor split across launches: 3000 + 1 chunks = 2048 + 953
    assert extension_launches([3000 * 65536, 5]) == 2
    # torch: per pass, 4096 tensors / {770, 448, 336} tensors per launch for 1, 2, 3 lists = 6, 10, 13
    assert torch_foreach_launches([8 * Ki] * 4096) == 4 * 6 + 5 * 10 + 2 * 13
    assert torch_foreach_launches([1 * Mi]) == 11


# ---- the sweep's pieces ----

def test_counts_parse_and_format():
    assert parse_count("32Mi") == 32 * Mi and parse_count("8Ki") == 8192 and parse_count("4096") == 4096
    assert format_count(32 * Mi) == "32Mi" and format_count(4095) == "4095" and format_count(2**30) == "1Gi"
    for bad in ("0", "1.5Mi", "12Xi", "-4", ""):
        with pytest.raises(ValueError, match="invalid count"):
            parse_count(bad)


def test_sweep_rounds_sizes_to_the_tensor_count_and_skips_impossible_cases():
    assert sweep((32 * Mi, 10), (1, 4096)) == [Case(32 * Mi, 1), Case(32 * Mi, 4096), Case(10, 1)]
    assert Case(32 * Mi, 4096).tensor_numel == 8 * Ki


def test_rotation_outgrows_the_cache_within_its_caps():
    config, cache = StepConfig(), 32 * Mi
    assert rotation_sets(Case(32 * Mi, 1), config, cache) == 2  # 512 MiB per set
    middle = Case(1 * Mi, 1)  # 16 MiB per set
    assert rotation_sets(middle, config, cache) * set_bytes(middle, config) >= 4 * cache
    assert rotation_sets(Case(1 * Ki, 1), config, cache) == 1024
    assert rotation_sets(Case(1 * Mi, 4096), config, cache) == 8
    assert rotation_sets(Case(16 * Ki, 4096), config, cache) == 16  # 65,536 tensors per role at most


def test_time_steps_rotates_evenly_over_every_set():
    calls = [0] * 5
    steps = [lambda i=i: calls.__setitem__(i, calls[i] + 1) for i in range(5)]
    measurement = time_steps(steps, CPU, warmup_rounds=2, repeats=4)
    assert len(measurement.per_step_seconds) == 4 and measurement.steps_per_sample >= 1
    timed = 4 * measurement.steps_per_sample
    assert sum(calls) == 5 + 2 * 5 + timed  # each set's first call, the warm-up rounds, the samples
    assert max(calls) - min(calls) <= 1  # a partial last round


def test_interleaved_timing_takes_the_samples_in_turn():
    order = []

    def step(name):
        def run():
            order.append(name)
            time.sleep(0.003)  # longer than a sample's minimum: one step per sample
        return run

    a, b = time_interleaved([[step("a")], [step("b")]], CPU, warmup_rounds=1, repeats=3)
    assert a.steps_per_sample == b.steps_per_sample == 1
    # prepared one after the other (first call, one warm-up round), then timed a, b, a, b, a, b
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert all(seconds >= 0.003 for seconds in a.per_step_seconds + b.per_step_seconds)


def test_a_gpu_sample_starts_its_clock_behind_one_untimed_step(monkeypatch):
    """The start event is queued after the lead step, so the host's latency to issue a step is not timed."""
    order = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            order.append("event")

        def elapsed_time(self, end):
            return 6.0  # milliseconds

    monkeypatch.setattr(timing.torch.cuda, "Event", Event)
    monkeypatch.setattr(timing, "synchronize", lambda device: None)
    steps = [lambda i=i: order.append(i) for i in range(3)]
    assert timing._sample(steps, 2, 3, torch.device("cuda")) == (6e-3, 4)
    assert order == [2, "event", 0, 1, 2, "event"]


def test_a_cpu_sample_with_a_lead_step_times_the_steps_after_it(monkeypatch):
    """The host-overhead case over one set: the untimed step runs first, on the set the sample starts at."""
    order, clock = [], iter([10.0, 10.5])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: (order.append("clock"), next(clock))[1])
    steps = [lambda i=i: order.append(i) for i in range(3)]
    assert timing._sample(steps, 2, 3, CPU, lead_step=True) == (0.5, 4)
    assert order == [2, "clock", 0, 1, 2, "clock"]
    order.clear()
    clock = iter([0.0, 0.25])
    assert timing._sample(steps, 2, 3, CPU) == (0.25, 3)
    assert order == ["clock", 2, 0, 1, "clock"]


def test_measurement_statistics():
    m = Measurement(tuple(float(v) for v in range(1, 11)), steps_per_sample=1, first_call_seconds=0.0)
    assert (m.median, m.p10, m.p90) == pytest.approx((5.5, 1.9, 9.1))


def test_slow_and_compiled_implementations_are_limited_by_default():
    big, many = Case(32 * Mi, 1), Case(1 * Mi, 4096)
    assert impls.case_skip_reason("reference", big, CPU, named=False, compile_all=False)
    assert impls.case_skip_reason("reference", big, CPU, named=True, compile_all=False) is None
    assert impls.case_skip_reason("torch-compile", many, CPU, named=False, compile_all=False)
    assert impls.case_skip_reason("torch-compile", many, CPU, named=False, compile_all=True) is None
    assert impls.case_skip_reason("cpp", big, CPU, named=False, compile_all=False) is None


def test_default_pytest_run_does_not_collect_the_benchmark_suite():
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_bench.py",
         "bench"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "bench/test_bench_step.py::" in completed.stdout  # collectable when asked for
    default = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert default.returncode == 0, default.stdout + default.stderr
    assert "tests/test_bench.py::" in default.stdout
    assert not [line for line in default.stdout.splitlines() if line.startswith("bench/")]


def test_compiled_baseline_reports_its_compile_time_apart(tmp_path):
    run_cli(["--device", "cpu", "--host-overhead", "off", "--sizes", "1Ki", "--tensors", "1", "--repeats", "2", "--threads", "1",
             "--backends", "cpp", "torch-compile", "--out", str(tmp_path)])
    with only_file(tmp_path, ".csv").open() as handle:
        rows = {row["implementation"]: row for row in csv.DictReader(handle)}
    compiled, ours = rows["torch-compile"], rows["cpp"]
    # compiling takes seconds; a compiled step on 1 Ki elements takes microseconds
    assert float(compiled["compile_s"]) > 100 * float(compiled["median_s"])
    assert ours["compile_s"] == ""
    assert float(ours["speedup_vs_torch_compile"]) == pytest.approx(
        float(compiled["median_s"]) / float(ours["median_s"]))


def test_a_scripts_results_are_printed_and_written_as_markdown_and_json(tmp_path, capsys):
    from adadelta_fused.bench.report import write_table_and_record

    write_table_and_record(tmp_path / "new", "case", "| a |\n| --- |", {"dtype": torch.bfloat16, "gbps": 1.5})
    assert capsys.readouterr().out == "| a |\n| --- |\n"
    assert (tmp_path / "new" / "case.md").read_text() == "| a |\n| --- |\n"
    assert json.loads((tmp_path / "new" / "case.json").read_text()) == {"dtype": "torch.bfloat16", "gbps": 1.5}


def test_a_timed_row_is_credited_with_its_bytes_at_the_median():
    from adadelta_fused.bench.report import timed_row

    row = timed_row(Measurement((2e-3, 1e-3, 4e-3), 1, 0.0), 28, 10**6, 28.0)
    assert row == dict(median_ms=2.0, p10_ms=pytest.approx(1.2), p90_ms=pytest.approx(3.6), bytes_per_element=28,
                       gbps=pytest.approx(14.0), percent_of_bandwidth=pytest.approx(50.0))
