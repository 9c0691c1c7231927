"""scripts/gpu_check.sh without a GPU: it says so and does nothing; and its verdict and files, from fabricated
stage results (--dry-run), for a passing run and for each way a run can fail."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"

spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)

Mi = 2**20
ADAMW_SECONDS = 1e-3


def fabricated(*, fraction_of_copy=0.95, vs_adamw=1.0, skipped=0, triton_memcheck="clean", bf16=True) -> dict:
    """Stage results as a run writes them into gpu_check.json: every row of ours takes ``vs_adamw`` times
    AdamW's time, and the fp32 flat rows run at ``fraction_of_copy`` of the copy probe."""
    def document(dtype: str) -> dict:
        bytes_per_element = 28 if dtype == "fp32" else 14
        rows = []
        for tensors in gpu_check.BENCH_TENSORS:
            for name in gpu_check.BENCH_IMPLEMENTATIONS:
                ours = name.removesuffix(gpu_check.FLAT) in gpu_check.OURS
                seconds = ADAMW_SECONDS * (vs_adamw if ours else 1.0)
                rows.append({"numel": 32 * Mi, "tensors": tensors, "implementation": name, "median_s": seconds,
                             "gbps": bytes_per_element * 32 * Mi / seconds / 1e9, "per_step_s": [seconds] * 3})
        flat_gbps = 28 * 32 * Mi / (ADAMW_SECONDS * vs_adamw) / 1e9
        return {"rows": rows, "bandwidth": [{"probe": "copy", "gbps": flat_gbps / fraction_of_copy},
                                            {"probe": "axpy", "gbps": 1.0}]}

    return {
        "gpu": "NVIDIA H200 (fabricated)",
        "build": {"arch": "9.0", "seconds": 80.0, "ok": True},
        "tests": {"exit_status": 0, "tests": 300, "failures": 0, "errors": 0, "skipped": skipped},
        "bench": {"fp32": document("fp32"), "bf16": document("bf16") if bf16 else None},
        "memcheck": {"cpp": {"status": "clean", "detail": "0 errors"},
                     "triton": {"status": triton_memcheck, "detail": "fabricated"}},
    }


def dry_run(tmp_path: Path, results: dict) -> tuple[subprocess.CompletedProcess, Path]:
    given = tmp_path / "results.json"
    given.write_text(json.dumps(results))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", str(given), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    return done, out


def test_without_a_gpu_it_says_so_and_does_nothing(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "gpu_check: no GPU here (torch.cuda.is_available() is False, or no torch): nothing to do"
    ]
    assert not (tmp_path / "out").exists()


def test_a_passing_run_writes_its_files_and_ends_with_pass(tmp_path):
    done, out = dry_run(tmp_path, fabricated())
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: PASS: GPU tests (300 tests, 0 failed, 0 errors, 0 skipped); memcheck")
    assert "cpp-flat 95%, triton-flat 95% of copy" in last
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(["gpu_check.log", "gpu_check.json", "gpu_check.md", "bench.csv"])
    assert len(written) <= gpu_check.MAX_FILES
    assert all((out / name).stat().st_size <= gpu_check.MAX_FILE_BYTES for name in written)
    assert (out / "gpu_check.log").read_text().splitlines()[-1] == last
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["verdict"] == last and all(c["passed"] for c in summary["conditions"])
    csv_lines = (out / "bench.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 2 * len(gpu_check.BENCH_TENSORS) * len(gpu_check.BENCH_IMPLEMENTATIONS)
    assert "| fp32 | 32Mi x 1 | cpp-flat | 1.000 | 940 | 95% | 1.00x |" in (out / "gpu_check.md").read_text()


@pytest.mark.parametrize(
    "results, failing",
    [
        (fabricated(skipped=1), "GPU tests (300 tests, 0 failed, 0 errors, 1 skipped)"),
        (fabricated(triton_memcheck="errors"), "memcheck (cpp clean, triton errors)"),
        (fabricated(triton_memcheck="not run"), "memcheck (cpp clean, triton not run)"),
        (fabricated(fraction_of_copy=0.89),
         "fp32 32Mi x 1 flat >= 90% of copy (cpp-flat 89%, triton-flat 89% of copy 1056 GB/s)"),
        (fabricated(vs_adamw=1.06),
         "step time <= 1.05x AdamW(fused=True) (worst fp32 32Mi x 1 cpp: 1.06x over 16 of 16 rows)"),
        (fabricated(bf16=False),
         "step time <= 1.05x AdamW(fused=True) (worst fp32 32Mi x 1 cpp: 1.00x over 8 of 16 rows)"),
    ],
    ids=["skipped-test", "memcheck-errors", "memcheck-not-run", "below-copy", "slower-than-adamw", "no-bf16-bench"],
)
def test_each_failed_condition_is_named_on_the_last_line(tmp_path, results, failing):
    done, out = dry_run(tmp_path, results)
    assert done.returncode == 1
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: FAIL: ")
    if failing:
        assert last == f"gpu_check: FAIL: {failing}"
    assert (out / "gpu_check.log").read_text().splitlines()[-1] == last
    assert len(list(out.iterdir())) <= gpu_check.MAX_FILES


def test_a_run_with_no_results_fails_every_condition(tmp_path):
    done, _ = dry_run(tmp_path, {})
    assert done.returncode == 1
    found = gpu_check.conditions({})
    assert not any(c.passed for c in found)
    assert done.stdout.strip().splitlines()[-1] == gpu_check.verdict(found)


def test_arguments(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    args = gpu_check.parse_args([])
    assert args.out == Path("bench/results/gpu") and not args.no_build and args.dry_run is None
    monkeypatch.setenv("OUT", "/tmp/elsewhere")
    assert gpu_check.parse_args([]).out == Path("/tmp/elsewhere")
    assert gpu_check.parse_args(["--out", "x", "--no-build"]).out == Path("x")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--bogus"])


def test_junit_counts_sum_every_suite(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1"/>'
                   '<testsuite tests="2" failures="0" errors="1" skipped="0"/></testsuites>')
    assert gpu_check.junit_counts(xml) == {"tests": 5, "failures": 1, "errors": 1, "skipped": 1}


def test_a_long_log_keeps_its_end_under_the_cap():
    text = "x" * gpu_check.MAX_FILE_BYTES + "the end"
    capped = gpu_check._capped(text)
    assert len(capped.encode()) <= gpu_check.MAX_FILE_BYTES and capped.endswith("the end")
    assert capped.startswith("[gpu_check: the start of this file was cut")


def test_the_shapes_table_is_copied_and_a_missing_one_is_no_error(tmp_path):
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    (scratch / "shapes").mkdir(parents=True)
    (scratch / "shapes" / "triton_launch_sweep.md").write_text("| fp32 (shipped) | 2048 | 4 |\n")
    written = gpu_check.write_outputs(out, fabricated(), gpu_check.Log(), scratch)
    assert out / "triton_launch_sweep.md" in written
    assert (out / "triton_launch_sweep.md").read_text() == "| fp32 (shipped) | 2048 | 4 |\n"
    (scratch / "shapes" / "triton_launch_sweep.md").unlink()
    written = gpu_check.write_outputs(tmp_path / "again", fabricated(), gpu_check.Log(), scratch)
    assert not (tmp_path / "again" / "triton_launch_sweep.md").exists()
    assert len(written) <= gpu_check.MAX_FILES


def test_script_stages_find_the_package_first():
    path = gpu_check.repo_on_path()["PYTHONPATH"].split(os.pathsep)
    assert path[0] == str(gpu_check.ROOT)


@pytest.mark.parametrize("gpus", [1, 2])
def test_tests_needing_two_gpus_are_deselected_on_one(tmp_path, gpus):
    command = gpu_check.tests_command(sys.executable, tmp_path / "junit.xml", gpus)
    listed = subprocess.run([*command, "--collect-only", "-p", "no:cacheprovider"], cwd=gpu_check.ROOT, capture_output=True, text=True, check=True).stdout
    two_gpu_tests = [line for line in listed.splitlines() if "over_two_gpus" in line]
    assert ("test_cuda_kernel.py" in listed) and (bool(two_gpu_tests) == (gpus >= 2)), listed[-2000:]
