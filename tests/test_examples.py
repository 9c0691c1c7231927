"""The examples run as a user would run them."""

from __future__ import annotations

import itertools
import json
import pathlib
import re
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


# A table cell of examples/zeiler2012.py's report: test error in %, mean ± std over the seeds.
CELL = r"\d+\.\d\d ± \d+\.\d\d"


def table_rows(report: str, heading: str) -> list[list[str]]:
    """The cells (first column dropped) of the body rows of the first table after ``heading``."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    return [[cell.strip() for cell in line.strip("|").split("|")[1:]] for line in table[2:]]  # past the header


def test_zeiler2012_quick_writes_the_three_tables_the_plot_and_every_run(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "zeiler2012.py"), "--quick", "--check-torch", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    report = (out / "report.md").read_text()
    shapes = {  # heading: (rows, numeric columns)
        "## 1. ADADELTA over ρ × ε": (4, 3),
        "## 2. SGD, Momentum and Adagrad": (3, 5),
        "## 3. Noisy gradients": (4, 4),
    }
    for heading, (rows, columns) in shapes.items():
        cells = table_rows(report, heading)
        assert [len(row) for row in cells] == [columns] * rows, heading
        assert all(re.fullmatch(CELL, cell) for row in cells for cell in row), cells
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    document = json.loads((out / "results.json").read_text())
    runs = document["runs"]
    # rho x eps, 3 methods x 5 rates, 4 methods x 4 noise scales; --check-torch: torch's rho x eps, its eps = 1e-2
    # row from a start 1 ulp away, and both optimizers' rho x eps in float64
    assert len(runs) == 12 + 15 + 16 + 12 + 3 + 12 + 12
    checks = [run for run in runs
              if run["setting"]["method"] == "torch ADADELTA" or run["setting"]["dtype"] == "float64"]
    assert len(checks) == 12 + 3 + 12 + 12
    for run in runs:  # --quick: 2 epochs; --check-torch's runs are evaluated after the last one only
        assert len(run["test_error"]) == len(run["train_loss"]) == (1 if run in checks else 2)
    assert all(0 <= run["final_test_error"] <= 100 for run in runs)
    assert document["metadata"]["settings"]["backend"] == "cpp"  # the fused kernel, not the pure-torch reference

    # --check-torch: the verdict in the report and the exit status agree, and the stdout is only the file list.
    check = document["metadata"]["torch_check"]
    for comparison, rows in (("float64", 4), ("float32", 4), ("control", 1)):
        assert check[comparison]["runs"] == 3 * rows and 0 <= check[comparison]["max_cell_difference"] <= 100
    for table, rows in (("float64 (the check), percentage points:", 4), ("For information, not the check:", 4),
                        ("Control, float32,", 1)):
        cells = table_rows(report, table)
        assert [len(row) for row in cells] == [3] * rows
        assert all(re.fullmatch(r"\d+\.\d\d", cell) for row in cells for cell in row), cells
    verdict = re.search(r"^(PASS|FAIL): torch.optim.Adadelta", report, re.MULTILINE).group(1)
    assert verdict == ("PASS" if check["float64"]["max_cell_difference"] <= 0.1 else "FAIL")
    assert check["passed"] == (verdict == "PASS")
    assert result.returncode == (0 if verdict == "PASS" else 1), result.stderr
    assert result.stdout.splitlines() == [f"wrote {out / name}" for name in ("report.md", "learning_curves.png",
                                                                               "results.json")]


def test_zeiler2012_without_scikit_learn_fails_with_a_clear_message(tmp_path):
    script = EXAMPLES / "zeiler2012.py"
    blocked = (  # an interpreter where `import sklearn` fails, as if it were not installed
        "import runpy, sys; sys.modules['sklearn'] = None; "
        f"sys.argv = [{str(script)!r}, '--quick', '--out', {str(tmp_path / 'results')!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "needs scikit-learn" in result.stderr and "pip install scikit-learn" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()
