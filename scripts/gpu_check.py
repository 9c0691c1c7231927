"""GPU day one (issue 19): build, test, benchmark and memcheck on the local GPU, then one verdict line.

    bash scripts/gpu_check.sh            # from the repo root, with the machine's own python3, no network

Stages, each timed:
  1. build   the extension in place, CUDA kernel for this GPU's architecture only (TORCH_CUDA_ARCH_LIST from
             torch.cuda.get_device_capability), strictly: a failed CUDA build is an error, not a fallback;
  2. tests   tests/gpu and the compiled-Triton tests of tests/test_triton.py; a skipped test is a failure;
  3. bench   python -m adadelta_fused.bench on cuda, fp32 and bf16, 32 Mi elements as 1 and 4096 tensors:
             our cpp and triton kernels per tensor and flat, torch.optim.Adadelta foreach,
             torch.optim.AdamW(fused=True) and the bandwidth probes (copy among them);
  4. memcheck compute-sanitizer --tool memcheck over scripts/gpu_memcheck_step.py, for each kernel;
  5. shapes   bench/triton_launch_sweep.py: the Triton flat kernel at each BLOCK and warp count, for the
             record (no condition): the first H200 run found the shipped shape at 54 % of copy.
Everything lands in ${OUT:-bench/results/gpu} (--out): at most MAX_FILES files of at most MAX_FILE_BYTES each.
The last line printed is the verdict, PASS or FAIL, with every condition that failed.

Without a GPU it says so and exits 0, having done nothing. ``--dry-run RESULTS.json`` skips the stages and
evaluates and writes given stage results instead (the CPU tests feed it fabricated ones).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20

# The pass conditions (issue 19). The copy probe moves 8 B per element (read one, write one) at the
# device's bandwidth, and our fp32 step moves 28 B per element; at 90% of copy's GB/s the step is within
# 10% of what that memory can do.
BANDWIDTH_NUMEL = 32 * 2**20
MIN_FRACTION_OF_COPY = 0.90
# AdamW(fused=True) moves the same 28 B/element in one tuned kernel: we may be at most 5% slower.
MAX_TIME_VS_ADAMW = 1.05
OURS = ("cpp", "triton")
FLAT = "-flat"
ADAMW = "torch-fused-adamw"
DTYPES = ("fp32", "bf16")
BENCH_IMPLEMENTATIONS = (*OURS, *(f"{name}{FLAT}" for name in OURS), "torch-foreach", ADAMW)
BENCH_TENSORS = (1, 4096)
# 15 samples of at least 2 ms (timing.MIN_SAMPLE_SECONDS) per row: at the ~0.25 ms an H200 needs for a
# 32 Mi fp32 step (940 MB at ~4 TB/s), 6 rows x 2 cases x 15 x 2 ms is under a second; a bench run's time
# goes to starting torch, making the data and Triton's first compiles.
BENCH_REPEATS = 15

# Each stage's limit, and 7.5 minutes for all of them (DEADLINE_S): a stage that hangs fails instead of
# eating the machine's lease, and the run ends within 8 minutes whatever happens. Later stages get what
# is left, down to nothing ("out of time").
DEADLINE_S = 450
BUILD_TIMEOUT_S = 180
TESTS_TIMEOUT_S = 180  # Triton compiles a kernel per (dtype, flags) configuration the tests use: many
BENCH_TIMEOUT_S = 90  # per dtype
MEMCHECK_TIMEOUT_S = 60  # per kernel
SHAPES_TIMEOUT_S = 150  # about 50 Triton compiles; last, so that it only ever gets what the checks left

FILES = {
    "log": "gpu_check.log",
    "junit": "gpu-tests.xml",
    "summary": "gpu_check.json",
    "table": "gpu_check.md",
    "csv": "bench.csv",
    **{f"png-{dtype}": f"bench-{dtype}.png" for dtype in DTYPES},
    "shapes": "triton_launch_sweep.md",
}
assert len(FILES) <= MAX_FILES


class Log:
    """Prints and keeps every line, for gpu_check.log."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(text.splitlines() or [""])


_STARTED = time.perf_counter()


def run(log: Log, command: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit status, output) of ``command`` from the repo root, its output copied into the log, run for at
    most ``timeout`` seconds and never past DEADLINE_S. A timeout is exit status 124, as coreutils' reports."""
    log(f"$ {' '.join(command)}")
    timeout = min(timeout, DEADLINE_S - (time.perf_counter() - _STARTED))
    if timeout <= 0:
        log(f"out of time: the {DEADLINE_S} s of all stages are spent")
        return 124, ""
    try:
        done = subprocess.run(
            command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout or ""
        log(output)
        log(f"timed out after {timeout:.0f} s")
        return 124, output
    except FileNotFoundError as error:
        log(f"cannot run: {error}")
        return 127, str(error)
    log(done.stdout.rstrip())
    return done.returncode, done.stdout


# ---- the stages ----

def build(log: Log, python: str, arch: str) -> dict:
    env = {"TORCH_CUDA_ARCH_LIST": arch, "ADADELTA_FUSED_BUILD_CUDA": "1", "ADADELTA_FUSED_STRICT_BUILD": "1"}
    started = time.perf_counter()
    status, _ = run(log, [python, "setup.py", "build_ext", "--inplace"], BUILD_TIMEOUT_S, env)
    seconds = time.perf_counter() - started
    if status == 0:
        probe = "from adadelta_fused import _extension; assert _extension.has_cuda_kernel(), _extension.load_error()"
        status, _ = run(log, [python, "-c", probe], 60)
    log(f"build for sm_{arch.replace('.', '')}: {seconds:.0f} s, {'ok' if status == 0 else 'FAILED'}")
    return {"arch": arch, "seconds": seconds, "ok": status == 0}


def toolchain(log: Log) -> None:
    """The compilers a build uses and what the built extension takes of libstdc++, into the log. On the H200
    image (2026-12-04) a number formatted into a check's message crashed inside _C.so, in libstdc++ code linked
    into the extension, whose locale ids need not be those of the libstdc++ the process loads (that image's g++
    finds only libstdc++.a). setup.py now links the libstdc++ torch loaded: the count of such symbols defined in
    _C.so should read 0."""
    for variable, default in (("CC", "cc"), ("CXX", "c++")):
        name = os.environ.get(variable, default)
        compiler = shutil.which(name) or name
        run(log, [compiler, "--version"], 30)
        for library in ("libstdc++.so", "libstdc++.a"):  # one a call: given both, gcc answers the last only
            run(log, [compiler, f"-print-file-name={library}"], 30)
    built = sorted(ROOT.glob("adadelta_fused/_C*.so"))
    if not built:
        log("toolchain: no adadelta_fused/_C*.so to inspect")
        return
    library = shlex.quote(str(built[-1]))
    inspect = (f"ldd {library} | grep -i 'stdc++'; echo \"libstdc++ locale symbols defined in _C.so:\" "
               f"$(nm -C --defined-only {library} | grep -c -E 'std::(locale|codecvt|num_put)')")
    run(log, ["sh", "-c", inspect], 30)


def junit_counts(path: Path) -> dict:
    """tests, failures, errors and skipped summed over the suites of a junit XML file."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    return {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped")}


def tests_command(python: str, junit: Path, gpus: int) -> list[str]:
    # tests/gpu carries the `gpu` marker; the compiled-Triton cases of tests/test_triton.py are its `cuda`
    # device parameter and the opcheck on CUDA. -k matches marker names and test ids alike. A test that
    # needs two GPUs skips on one, and a skip fails the stage: on one GPU such tests are deselected instead.
    command = [python, "-m", "pytest", "tests/gpu", "tests/test_triton.py", "-k", "gpu or cuda", "-q", "-rs",
               f"--junitxml={junit}"]
    return command + (["-m", "not two_gpus"] if gpus < 2 else [])


def tests(log: Log, python: str, junit: Path, gpus: int) -> dict:
    env = {"ADADELTA_FUSED_BUILD_CUDA": "1", "ADADELTA_FUSED_REQUIRE_EXTENSION": "1"}
    command = tests_command(python, junit, gpus)
    status, _ = run(log, command, TESTS_TIMEOUT_S, env)
    counts = junit_counts(junit) if junit.exists() else {"tests": 0, "failures": 0, "errors": 1, "skipped": 0}
    return {"exit_status": status, **counts}


def bench(log: Log, python: str, dtype: str, scratch: Path) -> dict | None:
    """The benchmark's JSON document for ``dtype``, with its PNG left in ``scratch``; None if it failed."""
    out = scratch / dtype
    command = [python, "-m", "adadelta_fused.bench", "--device", "cuda", "--dtype", dtype, "--sizes", "32Mi",
               "--tensors", *map(str, BENCH_TENSORS), "--backends", *BENCH_IMPLEMENTATIONS,
               "--repeats", str(BENCH_REPEATS), "--no-compile", "--out", str(out)]
    status, _ = run(log, command, BENCH_TIMEOUT_S)
    documents = sorted(out.glob("*.json"))
    if status != 0 or not documents:
        return None
    return json.loads(documents[-1].read_text())


def repo_on_path() -> dict[str, str]:
    """PYTHONPATH with the repo first, for a script run by its path: Python's path then starts at the script's
    folder, and `import adadelta_fused` failed so on the H200 (2026-12-04), where the package is not installed."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def triton_shapes(log: Log, python: str, scratch: Path) -> dict | None:
    """The launch-shape sweep's JSON document, with its table left in ``scratch``; None if it failed."""
    out = scratch / "shapes"
    status, _ = run(log, [python, "bench/triton_launch_sweep.py", "--out", str(out)], SHAPES_TIMEOUT_S,
                    repo_on_path())
    document = out / "triton_launch_sweep.json"
    return json.loads(document.read_text()) if status == 0 and document.exists() else None


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else in the toolkit (a toolkit's bin is often not on PATH)."""
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    candidates = [shutil.which("compute-sanitizer")] + [os.path.join(h, "bin", "compute-sanitizer") for h in homes if h]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def memcheck(log: Log, python: str, backend: str) -> dict:
    """clean, errors, or the reason the tool did not give a verdict."""
    sanitizer = find_sanitizer()
    if sanitizer is None:
        return {"status": "not run", "detail": "no compute-sanitizer on PATH or in a CUDA toolkit"}
    # Each tensor its own cudaMalloc: inside torch's caching allocator's blocks an overrun hits memory that
    # is allocated, and memcheck would not see it.
    env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", **repo_on_path()}
    command = [sanitizer, "--tool", "memcheck", python, "scripts/gpu_memcheck_step.py", "--backend", backend]
    status, output = run(log, command, MEMCHECK_TIMEOUT_S, env)
    summary = re.search(r"ERROR SUMMARY: (\d+) error", output)
    if summary is None:
        return {"status": "not run", "detail": f"no ERROR SUMMARY from compute-sanitizer (exit status {status})"}
    errors = int(summary.group(1))
    if errors or status != 0:
        return {"status": "errors", "detail": f"{errors} errors, exit status {status}"}
    return {"status": "clean", "detail": "0 errors"}


# ---- the verdict ----

@dataclass(frozen=True)
class Condition:
    name: str
    passed: bool
    detail: str


def _rows(results: dict, dtype: str) -> list[dict]:
    return (results.get("bench", {}).get(dtype) or {}).get("rows", [])


def _copy_gbps(results: dict, dtype: str) -> float | None:
    document = results.get("bench", {}).get(dtype) or {}
    return next((p["gbps"] for p in document.get("bandwidth", []) if p["probe"] == "copy"), None)


def conditions(results: dict) -> list[Condition]:
    found = []
    t = results.get("tests", {})
    bad = t.get("failures", 0) + t.get("errors", 0) + t.get("skipped", 0)
    found.append(Condition(
        "GPU tests", t.get("tests", 0) > 0 and bad == 0 and t.get("exit_status") == 0,
        f"{t.get('tests', 0)} tests, {t.get('failures', 0)} failed, {t.get('errors', 0)} errors, "
        f"{t.get('skipped', 0)} skipped",
    ))

    checks = results.get("memcheck", {})
    found.append(Condition(
        "memcheck", all(checks.get(k, {}).get("status") == "clean" for k in OURS),
        ", ".join(f"{k} {checks.get(k, {}).get('status', 'not run')}" for k in OURS),
    ))

    copy = _copy_gbps(results, "fp32")
    flat = {r["implementation"]: r for r in _rows(results, "fp32")
            if r["numel"] == BANDWIDTH_NUMEL and r["tensors"] == 1 and r["implementation"].endswith(FLAT)}
    fractions = {f"{k}{FLAT}": flat[f"{k}{FLAT}"]["gbps"] / copy for k in OURS if copy and f"{k}{FLAT}" in flat}
    found.append(Condition(
        f"fp32 32Mi x 1 flat >= {MIN_FRACTION_OF_COPY:.0%} of copy",
        len(fractions) == len(OURS) and all(f >= MIN_FRACTION_OF_COPY for f in fractions.values()),
        (", ".join(f"{k} {f:.0%}" for k, f in fractions.items()) or "no data")
        + (f" of copy {copy:.0f} GB/s" if copy else ""),
    ))

    ratios = {}
    for dtype in DTYPES:
        rows = _rows(results, dtype)
        adamw = {(r["numel"], r["tensors"]): r["median_s"] for r in rows if r["implementation"] == ADAMW}
        for r in rows:
            if r["implementation"].removesuffix(FLAT) in OURS and (r["numel"], r["tensors"]) in adamw:
                label = f"{dtype} {r['numel'] // 2**20}Mi x {r['tensors']} {r['implementation']}"
                ratios[label] = r["median_s"] / adamw[(r["numel"], r["tensors"])]
    # Every dtype, tensor count and kernel of ours, per tensor and flat: a bench that failed is no pass.
    expected = len(DTYPES) * len(BENCH_TENSORS) * 2 * len(OURS)
    worst = max(ratios, key=ratios.get, default=None)
    found.append(Condition(
        f"step time <= {MAX_TIME_VS_ADAMW}x AdamW(fused=True)",
        len(ratios) == expected and all(v <= MAX_TIME_VS_ADAMW for v in ratios.values()),
        f"worst {worst}: {ratios[worst]:.2f}x over {len(ratios)} of {expected} rows" if worst else "no data",
    ))
    return found


def verdict(found: list[Condition]) -> str:
    failed = [c for c in found if not c.passed]
    if not failed:
        return "gpu_check: PASS: " + "; ".join(f"{c.name} ({c.detail})" for c in found)
    return "gpu_check: FAIL: " + "; ".join(f"{c.name} ({c.detail})" for c in failed)


def table(results: dict) -> str:
    """The benchmark as a markdown table, for README's "On a GPU" section."""
    lines = ["| dtype | elements x tensors | implementation | median ms | GB/s | % of copy | vs AdamW(fused) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for dtype in DTYPES:
        rows, copy = _rows(results, dtype), _copy_gbps(results, dtype)
        adamw = {(r["numel"], r["tensors"]): r["median_s"] for r in rows if r["implementation"] == ADAMW}
        for r in rows:
            base = adamw.get((r["numel"], r["tensors"]))
            of_copy = f"{r['gbps'] / copy:.0%}" if copy else "-"
            vs_adamw = f"{r['median_s'] / base:.2f}x" if base else "-"
            lines.append(
                f"| {dtype} | {r['numel'] // 2**20}Mi x {r['tensors']} | {r['implementation']} | "
                f"{r['median_s'] * 1e3:.3f} | {r['gbps']:.0f} | {of_copy} | {vs_adamw} |"
            )
    return "\n".join(lines)


# ---- the files ----

def _capped(text: str) -> str:
    """``text`` cut to MAX_FILE_BYTES, keeping its end (a failure's last lines matter most)."""
    data = text.encode()
    if len(data) <= MAX_FILE_BYTES:
        return text
    note = b"[gpu_check: the start of this file was cut to keep it under 16 MiB]\n"
    return (note + data[len(data) - MAX_FILE_BYTES + len(note):]).decode(errors="ignore")


def write_outputs(out: Path, results: dict, log: Log, scratch: Path | None) -> list[Path]:
    """Every file, the log last: its last line is the verdict, which is also the last line printed."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if scratch and (scratch / "junit.xml").exists():
        written.append(Path(shutil.copyfile(scratch / "junit.xml", out / FILES["junit"])))

    def write(key: str, text: str) -> None:
        path = out / FILES[key]
        path.write_text(_capped(text))
        written.append(path)

    rows = [{"dtype": dtype, **{k: v for k, v in r.items() if k != "per_step_s"}}
            for dtype in DTYPES for r in _rows(results, dtype)]
    if rows:
        with (out / FILES["csv"]).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
        written.append(out / FILES["csv"])
    for dtype in DTYPES:
        plots = sorted((scratch / dtype).glob("*.png")) if scratch else []
        if plots and plots[-1].stat().st_size <= MAX_FILE_BYTES:
            written.append(Path(shutil.copyfile(plots[-1], out / FILES[f"png-{dtype}"])))
    shapes = scratch / "shapes" / FILES["shapes"] if scratch else None
    if shapes and shapes.exists():
        written.append(Path(shutil.copyfile(shapes, out / FILES["shapes"])))
    found = conditions(results)
    line = verdict(found)
    write("summary", json.dumps({**results, "conditions": [c.__dict__ for c in found], "verdict": line},
                                indent=1, default=str) + "\n")
    write("table", table(results) + "\n")
    log("\n".join(f"wrote {path}" for path in written + [out / FILES["log"]]))
    log(line)
    write("log", "\n".join(log.lines) + "\n")
    return written


# ---- the command ----

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0],
        epilog="Run from the repo root; the last line printed is the verdict.",
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench/results/gpu"),
                        help="results folder (default: $OUT, else bench/results/gpu)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter for the stages (default: this one)")
    parser.add_argument("--no-build", action="store_true", help="keep the extension already built in place")
    parser.add_argument("--dry-run", type=Path, metavar="RESULTS.json",
                        help="no stages: evaluate and write these stage results (as in gpu_check.json)")
    return parser.parse_args(argv)


def gpu_arch() -> tuple[str, str, int] | None:
    """(device name, "major.minor") of GPU 0 and the number of GPUs, or None without one. torch is imported
    only here: the stages run in subprocesses, so the extension is imported after it is built."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}", torch.cuda.device_count()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = Log()
    if args.dry_run:
        results = json.loads(args.dry_run.read_text())
        log(f"gpu_check: dry run over {args.dry_run}; no stage runs")
        scratch = None
    else:
        found_gpu = gpu_arch()
        if found_gpu is None:
            print("gpu_check: no GPU here (torch.cuda.is_available() is False, or no torch): nothing to do")
            return 0
        name, arch, gpus = found_gpu
        log(f"gpu_check: {gpus} x {name}, sm_{arch.replace('.', '')}, python {args.python}")
        # setuptools older than 77 cannot read pyproject's license field, and the build would fail on it.
        versions = "import setuptools as s, torch, triton; print(torch.__version__, triton.__version__, s.__version__)"
        run(log, [args.python, "-c", versions], 60)
        results = {"gpu": name, "stage_seconds": {}}
        scratch = Path(tempfile.mkdtemp(prefix="gpu_check-"))

        def stage(title: str, work):
            log(f"\n== {title}")
            begun = time.perf_counter()
            value = work()
            results["stage_seconds"][title] = seconds = time.perf_counter() - begun
            log(f"== {title}: {seconds:.0f} s (total {time.perf_counter() - _STARTED:.0f} s)")
            return value

        if not args.no_build:
            results["build"] = stage("build", lambda: build(log, args.python, arch))
        toolchain(log)
        results["tests"] = stage("tests", lambda: tests(log, args.python, scratch / "junit.xml", gpus))
        results["bench"] = {d: stage(f"bench {d}", lambda d=d: bench(log, args.python, d, scratch)) for d in DTYPES}
        results["memcheck"] = {k: stage(f"memcheck {k}", lambda k=k: memcheck(log, args.python, k)) for k in OURS}
        results["triton_shapes"] = stage("shapes", lambda: triton_shapes(log, args.python, scratch))
    log("\n" + table(results))
    write_outputs(args.out, results, log, scratch)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(c.passed for c in conditions(results)) else 1


if __name__ == "__main__":
    sys.exit(main())
