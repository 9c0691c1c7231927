"""Test the ADADELTA paper's claims (Zeiler 2012, arXiv:1212.5701) with adadelta_fused, offline.

    python examples/zeiler2012.py                  # the full run: ~4 minutes on a 2-core CPU, 6 with --check-torch
    python examples/zeiler2012.py --quick          # a smoke run of every table: under 30 s
    python examples/zeiler2012.py --check-torch    # also torch.optim.Adadelta in every rho x eps cell (below)

The paper trains a tanh MLP on MNIST with minibatches of 100. This trains one on scikit-learn's bundled
handwritten digits (1797 8x8 images, no download) with a fixed, stratified train/test split, and runs three
experiments, each cell over --seeds seeds (initial weights, batch order and gradient noise):

1. ADADELTA (adadelta_fused.Adadelta on the fused kernel that backend="auto" picks, lr=1.0: no learning rate
   to set) over the paper's grid rho in {0.9, 0.95, 0.99} x eps in {1e-2, 1e-4, 1e-6, 1e-8};
2. torch.optim.SGD, SGD with momentum 0.9 and Adagrad, each over a grid of learning rates;
3. Gaussian noise added to every gradient, its standard deviation a growing multiple of that gradient's RMS,
   for ADADELTA at the paper's setting and for each baseline at its best learning rate from 2.

It writes report.md (the three tables, test error in % as mean +- std over the seeds), learning_curves.png
and results.json (every run, with its per-epoch curves) to --out. Everything runs on the CPU, one thread:
the MLP has 17k parameters, too few to keep a GPU or a second thread busy.

--check-torch trains torch.optim.Adadelta in every rho x eps cell with the same seeds, batches and initial
weights, and exits 1 unless each cell's mean test error is within CHECK_TOLERANCE_POINTS of ours. The check
runs both optimizers in float64 (model, data and state): they differ only in the square root's last bit
(ours is correctly rounded, torch's vectorized CPU sqrt is not always), and in float32 the eps = 1e-2 cells
grow that bit into a different trained net, as they do for torch against itself started 1 ulp away. The
report also shows that float32 comparison and that control, for information.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import adadelta_fused
from adadelta_fused.backends import resolve
from adadelta_fused.bench.environment import describe

HIDDEN = (128, 64)  # two tanh hidden layers as in the paper, narrowed for 64 input pixels
BATCH = 100  # the paper's minibatch
TEST_FRACTION = 0.25
SPLIT_SEED = 0  # the train/test split never changes with --seeds

RHOS = (0.9, 0.95, 0.99)
EPSILONS = (1e-2, 1e-4, 1e-6, 1e-8)
PAPER_SETTING = dict(rho=0.95, eps=1e-6)  # the paper's choice for its MNIST comparison
LEARNING_RATES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
BASELINES = ("SGD", "Momentum", "Adagrad")
NOISE_SCALES = (0.0, 1.0, 3.0, 10.0)  # noise std as a multiple of each gradient tensor's RMS

FULL = dict(epochs=30, seeds=5)  # 14 updates per epoch; with --check-torch, 410 runs in about 6 minutes here
QUICK = dict(epochs=2, seeds=1)
CHECK_TOLERANCE_POINTS = 0.1  # percentage points of test error between our optimizer and torch's
CONTROL_EPSILONS = (1e-2,)  # --check-torch's 1-ulp control: the row where float32 last bits change the outcome


@dataclass(frozen=True)
class Digits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass(frozen=True)
class Setting:
    """One optimizer configuration: a cell of one of the tables."""

    experiment: str  # "sensitivity", "learning_rate" or "noise"
    method: str  # "ADADELTA", "torch ADADELTA" (--check-torch), or one of BASELINES
    hyper: tuple[tuple[str, float], ...]  # (name, value) pairs, not a dict: a setting keys a table cell
    noise: float = 0.0
    # Initial weights moved this many ulps up: --check-torch's control, which shows how far a last-bit
    # difference alone carries a cell's test error.
    start_ulps: int = 0
    # Model, data and optimizer state. --check-torch compares with torch in "float64", where a last-bit
    # difference starts 1e-16 relative instead of float32's 6e-8.
    dtype: str = "float32"

    @classmethod
    def of(cls, experiment: str, method: str, noise: float = 0.0, start_ulps: int = 0, dtype: str = "float32",
           **hyper: float) -> Setting:
        return cls(experiment, method, tuple(hyper.items()), noise, start_ulps, dtype)

    @property
    def kwargs(self) -> dict[str, float]:
        return dict(self.hyper)

    def label(self) -> str:
        hyper = ", ".join(f"{k}={v:g}" for k, v in self.hyper)
        noise = f", noise {self.noise:g}x" if self.noise else ""
        start = f", start +{self.start_ulps} ulp" if self.start_ulps else ""
        dtype = f", {self.dtype}" if self.dtype != "float32" else ""
        return f"{self.method} ({hyper}{noise}{start}{dtype})"


@dataclass
class Run:
    setting: Setting
    seed: int
    train_loss: list[float] = field(default_factory=list)  # full training set, after each epoch
    test_error: list[float] = field(default_factory=list)  # percent, after each epoch
    weights_sha256: str = ""
    seconds: float = 0.0

    @property
    def final_error(self) -> float:
        return self.test_error[-1]


def load_digits_split() -> Digits:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit(
            "examples/zeiler2012.py needs scikit-learn for its bundled digits data set:\n"
            "    pip install scikit-learn    (or: pip install adadelta_fused[examples])"
        )
    digits = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        digits.data, digits.target, test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    pixels = lambda x: torch.tensor(x / 16.0, dtype=torch.float32)  # 0..16 ink levels to 0..1, as MNIST's
    labels = lambda y: torch.tensor(y, dtype=torch.int64)
    return Digits(pixels(train_x), labels(train_y), pixels(test_x), labels(test_y))


def make_mlp() -> torch.nn.Sequential:
    layers, width = [], 64
    for hidden in HIDDEN:
        layers += [torch.nn.Linear(width, hidden), torch.nn.Tanh()]
        width = hidden
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def fused_backend() -> str:
    """The fused kernel that ``backend="auto"`` picks for the CPU; the pure-torch reference does not count."""
    backend = resolve("auto", torch.device("cpu")).NAME
    if backend == "reference":
        sys.exit(f"no fused adadelta_fused backend can run here: {adadelta_fused.available_backends()}")
    return backend


def make_optimizer(setting: Setting, params, backend: str) -> torch.optim.Optimizer:
    hyper = setting.kwargs
    if setting.method == "ADADELTA":
        return adadelta_fused.Adadelta(params, lr=1.0, backend=backend, **hyper)
    if setting.method == "torch ADADELTA":
        return torch.optim.Adadelta(params, lr=1.0, foreach=False, **hyper)
    if setting.method == "SGD":
        return torch.optim.SGD(params, **hyper)
    if setting.method == "Momentum":
        return torch.optim.SGD(params, momentum=0.9, **hyper)
    if setting.method == "Adagrad":
        return torch.optim.Adagrad(params, **hyper)
    raise ValueError(f"unknown method {setting.method!r}")


def train(setting: Setting, seed: int, data: Digits, epochs: int, backend: str, curves: bool = True) -> Run:
    """One run. Without ``curves`` (--check-torch's runs, which only compare final errors) it evaluates after the
    last epoch only: evaluating the 1797 images after every epoch costs about a quarter of a run."""
    started = time.perf_counter()
    dtype = getattr(torch, setting.dtype)
    data = Digits(data.train_x.to(dtype), data.train_y, data.test_x.to(dtype), data.test_y)
    torch.manual_seed(seed)
    model = make_mlp().to(dtype)  # initialized in float32 first: the same initial weights in either dtype
    with torch.no_grad():
        for _ in range(setting.start_ulps):
            for p in model.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, math.inf)))
    optimizer = make_optimizer(setting, model.parameters(), backend)
    # Separate streams, so that ADADELTA and torch's Adadelta see the same batches and the same noise.
    batches = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(10_000 + seed)
    run = Run(setting, seed)
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(data.train_y), generator=batches).split(BATCH):
            loss = torch.nn.functional.cross_entropy(model(data.train_x[batch]), data.train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            if setting.noise:
                for p in model.parameters():
                    rms = p.grad.square().mean().sqrt()
                    p.grad.add_(torch.randn(p.grad.shape, generator=noise, dtype=dtype) * (setting.noise * rms))
            optimizer.step()
        if not curves and epoch < epochs:
            continue
        with torch.no_grad():
            run.train_loss.append(torch.nn.functional.cross_entropy(model(data.train_x), data.train_y).item())
            wrong = (model(data.test_x).argmax(1) != data.test_y).sum().item()
            run.test_error.append(100.0 * wrong / len(data.test_y))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    run.weights_sha256 = hashlib.sha256(weights.numpy().tobytes()).hexdigest()
    run.seconds = time.perf_counter() - started
    return run


# ---- the experiments ----


def sensitivity_settings(method: str = "ADADELTA", start_ulps: int = 0, dtype: str = "float32",
                         epsilons: tuple[float, ...] = EPSILONS) -> list[Setting]:
    """The rho x eps cells, row by row of the table (eps), column by column (rho)."""
    return [Setting.of("sensitivity", method, start_ulps=start_ulps, dtype=dtype, rho=rho, eps=eps)
            for eps in epsilons for rho in RHOS]


def learning_rate_settings() -> list[Setting]:
    return [Setting.of("learning_rate", method, lr=lr) for method in BASELINES for lr in LEARNING_RATES]


def noise_settings(best_rates: dict[str, float]) -> list[Setting]:
    methods = [("ADADELTA", PAPER_SETTING)] + [(m, dict(lr=best_rates[m])) for m in BASELINES]
    return [Setting.of("noise", method, noise, **hyper) for method, hyper in methods for noise in NOISE_SCALES]


def errors_by_setting(runs: list[Run]) -> dict[Setting, list[float]]:
    cells: dict[Setting, list[float]] = {}
    for run in runs:
        cells.setdefault(run.setting, []).append(run.final_error)
    return cells


def best_learning_rates(runs: list[Run]) -> dict[str, float]:
    """Each baseline's learning rate with the lowest mean final test error (there is no validation split)."""
    cells = errors_by_setting(runs)
    best = {}
    for method in BASELINES:
        candidates = [s for s in cells if s.method == method and s.experiment == "learning_rate"]
        best[method] = min(candidates, key=lambda s: statistics.fmean(cells[s])).kwargs["lr"]
    return best


def run_all(settings: list[Setting], seeds: int, data: Digits, epochs: int, backend: str, bar: tqdm,
            curves: bool = True) -> list[Run]:
    runs = []
    for setting in settings:
        bar.set_postfix_str(setting.label())
        for seed in range(seeds):
            runs.append(train(setting, seed, data, epochs, backend, curves))
            bar.update()
    return runs


# ---- the report ----


def cell(errors: list[float]) -> str:
    return f"{statistics.fmean(errors):.2f} ± {statistics.pstdev(errors):.2f}"


def sensitivity_table(cells: dict[Setting, list[float]], method: str = "ADADELTA") -> str:
    lines = ["| ε \\ ρ | " + " | ".join(f"ρ = {rho:g}" for rho in RHOS) + " |", "| --- |" + " ---: |" * len(RHOS)]
    for eps in EPSILONS:
        row = [cell(cells[Setting.of("sensitivity", method, rho=rho, eps=eps)]) for rho in RHOS]
        lines.append(f"| ε = {eps:g} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def difference_table(comparison: Comparison) -> str:
    """A comparison's |difference| of each cell's mean test error, in percentage points, laid out as table 1
    (the rows of its epsilons)."""
    lines = ["| ε \\ ρ | " + " | ".join(f"ρ = {rho:g}" for rho in RHOS) + " |", "| --- |" + " ---: |" * len(RHOS)]
    differences = iter(comparison.cell_differences)  # sensitivity_settings' order: by eps, then by rho
    for eps in comparison.epsilons:
        lines.append(f"| ε = {eps:g} | " + " | ".join(f"{next(differences):.2f}" for _ in RHOS) + " |")
    return "\n".join(lines)


def learning_rate_table(cells: dict[Setting, list[float]]) -> str:
    lines = ["| method | " + " | ".join(f"lr = {lr:g}" for lr in LEARNING_RATES) + " |",
             "| --- |" + " ---: |" * len(LEARNING_RATES)]
    for method in BASELINES:
        row = [cell(cells[Setting.of("learning_rate", method, lr=lr)]) for lr in LEARNING_RATES]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def noise_table(cells: dict[Setting, list[float]]) -> str:
    noise_cells = [s for s in cells if s.experiment == "noise"]
    lines = ["| method | " + " | ".join(f"noise {n:g}x RMS" for n in NOISE_SCALES) + " |",
             "| --- |" + " ---: |" * len(NOISE_SCALES)]
    for base in [s for s in noise_cells if s.noise == NOISE_SCALES[0]]:
        row = [cell(cells[Setting("noise", base.method, base.hyper, n)]) for n in NOISE_SCALES]
        lines.append(f"| {base.label()} | " + " | ".join(row) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Comparison:
    """Two arms of the rho x eps grid, cell by cell and seed by seed: torch.optim.Adadelta's and another."""

    epsilons: tuple[float, ...]  # the rows of the grid compared
    cell_differences: list[float]  # |difference| of a cell's mean test errors, in sensitivity_settings' order
    max_run_difference: float  # percentage points between two runs of the same cell and seed
    identical_weights: int  # runs whose final weights are the same bits
    runs: int

    @property
    def max_cell_difference(self) -> float:
        return max(self.cell_differences)

    @property
    def equal_cells(self) -> int:
        return self.cell_differences.count(0.0)


@dataclass(frozen=True)
class TorchCheck:
    """--check-torch. The rule is on float64: in float32, the cells with eps = 1e-2 grow a last-bit difference
    (torch's vectorized CPU sqrt is 1 ulp off where ours is correctly rounded) into a different trained net,
    as the control shows; float64 starts that difference 1e-16 relative instead of 6e-8."""

    float64: Comparison  # adadelta_fused against torch, both in float64: the check
    float32: Comparison  # the same in float32, the precision of the tables: information
    # torch against itself started 1 ulp higher, float32, in the eps = 1e-2 row (the other rows do not move in
    # the float32 comparison): what a last bit alone does
    control: Comparison

    @property
    def passed(self) -> bool:
        return self.float64.max_cell_difference <= CHECK_TOLERANCE_POINTS


def torch_check_settings() -> list[Setting]:
    """The runs that --check-torch adds: torch in float32 (and from 1 ulp higher), both optimizers in float64."""
    control = sensitivity_settings("torch ADADELTA", start_ulps=1, epsilons=CONTROL_EPSILONS)
    return (sensitivity_settings("torch ADADELTA") + control
            + sensitivity_settings(dtype="float64") + sensitivity_settings("torch ADADELTA", dtype="float64"))


def check_against_torch(runs: list[Run]) -> TorchCheck:
    by_cell_and_seed = {(r.setting, r.seed): r for r in runs if r.setting.experiment == "sensitivity"}
    seeds = sorted({r.seed for r in runs})

    def compare(method: str, start_ulps: int = 0, dtype: str = "float32",
                epsilons: tuple[float, ...] = EPSILONS) -> Comparison:
        cell_pairs = zip(sensitivity_settings("torch ADADELTA", dtype=dtype, epsilons=epsilons),
                         sensitivity_settings(method, start_ulps, dtype, epsilons))
        by_cell = [[(by_cell_and_seed[(a, seed)], by_cell_and_seed[(b, seed)]) for seed in seeds]
                   for a, b in cell_pairs]
        mean = lambda pairs, side: statistics.fmean(pair[side].final_error for pair in pairs)
        run_pairs = [pair for pairs in by_cell for pair in pairs]
        return Comparison(
            epsilons=epsilons,
            cell_differences=[abs(mean(pairs, 0) - mean(pairs, 1)) for pairs in by_cell],
            max_run_difference=max(abs(a.final_error - b.final_error) for a, b in run_pairs),
            identical_weights=sum(a.weights_sha256 == b.weights_sha256 for a, b in run_pairs),
            runs=len(run_pairs),
        )

    return TorchCheck(float64=compare("ADADELTA", dtype="float64"), float32=compare("ADADELTA"),
                      control=compare("torch ADADELTA", start_ulps=1, epsilons=CONTROL_EPSILONS))


def loss_rises(train_loss: list[float]) -> tuple[int, int]:
    """(epochs whose training loss rose, epochs looked at) over the second half of one run: a run that has
    converged smoothly has none; one that oscillates around its minimum keeps rising and falling."""
    half = train_loss[len(train_loss) // 2 - 1:]
    return sum(after > before for before, after in zip(half, half[1:])), len(half) - 1


def curves_to_plot(runs: list[Run], cells: dict[Setting, list[float]]) -> dict[str, list[Run]]:
    """Label -> runs: the best setting of each method, and ADADELTA's worst cell and the paper's setting."""
    by_setting: dict[Setting, list[Run]] = {}
    for run in runs:
        if (run.setting.experiment in ("sensitivity", "learning_rate") and run.setting.method != "torch ADADELTA"
                and run.setting.dtype == "float32"):  # not --check-torch's float64 runs
            by_setting.setdefault(run.setting, []).append(run)
    paper = Setting.of("sensitivity", "ADADELTA", **PAPER_SETTING)
    mean_error = lambda s: statistics.fmean(cells[s])
    chosen = {}
    for method in ("ADADELTA", *BASELINES):
        candidates = [s for s in by_setting if s.method == method]
        best = min(candidates, key=mean_error)
        chosen[f"best: {best.label()}"] = by_setting[best]
        if method == "ADADELTA":
            worst = max(candidates, key=mean_error)
            chosen[f"worst: {worst.label()}"] = by_setting[worst]
            if paper not in (best, worst):
                chosen[f"paper's: {paper.label()}"] = by_setting[paper]
    return chosen


def write_plot(curves: dict[str, list[Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, error_axes) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    for label, runs in curves.items():
        epochs = range(1, len(runs[0].train_loss) + 1)
        mean_loss = [statistics.fmean(v) for v in zip(*(r.train_loss for r in runs))]
        mean_error = [statistics.fmean(v) for v in zip(*(r.test_error for r in runs))]
        style = {"worst": "--", "paper's": ":"}.get(label.split(":")[0], "-")
        loss_axes.plot(epochs, mean_loss, style, label=label)
        error_axes.plot(epochs, mean_error, style, label=label)
    loss_axes.set(yscale="log", xlabel="epoch", ylabel="training loss (cross-entropy, full set)")
    error_axes.set(xlabel="epoch", ylabel="test error (%, axis cut at 20)", ylim=(0, 20))
    error_axes.legend(fontsize=8)
    figure.suptitle(f"digits MLP {'-'.join(map(str, (64, *HIDDEN, 10)))}, tanh, batch {BATCH}: "
                    f"mean over {len(next(iter(curves.values())))} seeds")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(path: Path, runs: list[Run], metadata: dict, curves: dict[str, list[Run]],
                 check: TorchCheck | None, plot_name: str) -> None:
    cells = errors_by_setting(runs)
    settings = metadata["settings"]
    git = metadata.get("git") or {}
    commit = git.get("sha", "unknown")[:12] + (" (with local changes)" if git.get("dirty") else "")
    adadelta = [statistics.fmean(cells[s]) for s in sensitivity_settings()]
    lines = [
        "# ADADELTA's claims on the digits data set (Zeiler 2012, arXiv:1212.5701)",
        "",
        f"`python examples/zeiler2012.py {' '.join(metadata['arguments'])}`: "
        f"{settings['epochs']} epochs, {settings['seeds']} seeds, MLP 64-{'-'.join(map(str, HIDDEN))}-10 with tanh, "
        f"minibatch {BATCH}, {settings['train_size']} training and {settings['test_size']} test images. "
        f"Each cell: final test error in %, mean ± std over the seeds.",
        "",
        f"Ran in {metadata['seconds']:.0f} s on {metadata['cpu_model']} ({metadata['cpu_cores']} cores, "
        f"{metadata['torch_threads']} torch thread), torch {metadata['torch']}, triton {metadata['triton']}, "
        f"Python {metadata['python']}, adadelta_fused git {commit}, backend `{settings['backend']}`.",
        "",
        "## 1. ADADELTA over ρ × ε (the paper's sensitivity table)",
        "",
        f"`adadelta_fused.Adadelta(lr=1.0, rho, eps, backend='{settings['backend']}')`. "
        f"Spread over the 12 cells: {min(adadelta):.2f}% to {max(adadelta):.2f}%.",
        "",
        sensitivity_table(cells),
        "",
        "## 2. SGD, Momentum and Adagrad over learning rates",
        "",
        "torch.optim.SGD, SGD(momentum=0.9), torch.optim.Adagrad. For comparison, ADADELTA at the paper's "
        f"setting (ρ = {PAPER_SETTING['rho']}, ε = {PAPER_SETTING['eps']:g}): "
        f"{cell(cells[Setting.of('sensitivity', 'ADADELTA', **PAPER_SETTING)])}.",
        "",
        learning_rate_table(cells),
        "",
        "## 3. Noisy gradients",
        "",
        "Every gradient tensor gets Gaussian noise whose std is the multiple shown of that tensor's RMS, before "
        "each step. Baselines at their best learning rate from table 2 (picked on test error: there is no "
        "validation split, which flatters the baselines, not ADADELTA).",
        "",
        noise_table(cells),
        "",
        "## Learning curves",
        "",
        f"![learning curves]({plot_name})",
        "",
        "Epochs whose training loss rose, in the second half of training (mean over the seeds; a run that "
        "keeps rising and falling oscillates around its minimum instead of settling):",
        "",
    ]
    for label, curve_runs in curves.items():
        counts = [loss_rises(r.train_loss) for r in curve_runs]
        lines.append(f"- {label}: {statistics.fmean(c[0] for c in counts):.1f} of {counts[0][1]} epochs")
    lines += ["", "## Against torch.optim.Adadelta", ""]
    if check is None:
        lines.append("Not checked in this run (`--check-torch` trains torch.optim.Adadelta in every ρ × ε cell).")
    else:
        updates = settings["epochs"] * math.ceil(settings["train_size"] / BATCH)
        lines += torch_check_section(check, updates)
    path.write_text("\n".join(lines) + "\n")


def torch_check_section(check: TorchCheck, updates: int) -> list[str]:
    f64, f32, control = check.float64, check.float32, check.control
    summary = lambda c: (f"largest difference of a cell's mean final test error {c.max_cell_difference:.2f} "
                         f"points, of a single run {c.max_run_difference:.2f} points; the same mean in "
                         f"{c.equal_cells} of {len(c.cell_differences)} cells; final weights identical bit for "
                         f"bit in {c.identical_weights} of {c.runs} runs")
    return [
        f"{'PASS' if check.passed else 'FAIL'}: torch.optim.Adadelta(foreach=False) and adadelta_fused.Adadelta "
        "trained in float64 (model, data and optimizer state) in every ρ × ε cell, with the same seeds, batches "
        f"and initial weights: the rule is that their mean final test errors differ by at most "
        f"{CHECK_TOLERANCE_POINTS} percentage points in each cell. Here: {summary(f64)}.",
        "",
        "Why float64. Both compute torch's formula in torch's order and differ only in the square root: "
        "adadelta_fused rounds it correctly (IEEE), while torch's vectorized CPU sqrt is 1 ulp off for about one "
        "float32 input in six and one float64 input in a hundred (adadelta_fused/reference.py, `_sqrt`). In "
        f"float32 the ε = 1e-2 cells can grow that last bit into a different trained net within the {updates} "
        "updates, torch's own runs included (the control below). In float64 the difference starts near 1e-16 "
        "instead of 6e-8, so it has much further to grow before it changes a classification.",
        "",
        "|adadelta_fused − torch| of each cell's mean final test error, float64 (the check), percentage points:",
        "",
        difference_table(f64),
        "",
        f"For information, not the check: the same comparison in float32, the precision of table 1: {summary(f32)}.",
        "",
        difference_table(f32),
        "",
        "Control, float32, in the ε = 1e-2 row (where the float32 comparison moves): torch.optim.Adadelta "
        f"against itself started from initial weights 1 ulp higher: {summary(control)}. A last-bit difference "
        "alone moves the float32 test error this far.",
        "",
        difference_table(control),
    ]


def write_results(path: Path, runs: list[Run], metadata: dict) -> None:
    rows = [asdict(run) | {"setting": asdict(run.setting) | {"hyper": run.setting.kwargs}} for run in runs]
    for row, run in zip(rows, runs, strict=True):
        row["final_test_error"] = run.final_error
    document = {"metadata": metadata, "runs": rows}
    path.write_text(json.dumps(document, indent=1) + "\n")


# ---- the command ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['epochs']} epochs and {QUICK['seeds']} seed: every table, in seconds")
    parser.add_argument("--out", type=Path, default=Path("zeiler2012-results"), help="folder for the results")
    parser.add_argument("--seeds", type=int, help=f"seeds per cell (default {FULL['seeds']}, --quick {QUICK['seeds']})")
    parser.add_argument("--check-torch", action="store_true",
                        help="also train torch.optim.Adadelta in every rho x eps cell and compare, in float64 "
                             "(the check) and float32")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    seeds = args.seeds if args.seeds is not None else preset["seeds"]
    if seeds < 1:
        parser.error(f"--seeds must be at least 1, got {seeds}")
    data = load_digits_split()
    backend = fused_backend()
    torch.set_num_threads(1)
    started = time.perf_counter()

    first = sensitivity_settings() + learning_rate_settings()
    checks = torch_check_settings() if args.check_torch else []
    total = (len(first) + len(checks) + (1 + len(BASELINES)) * len(NOISE_SCALES)) * seeds
    bar = tqdm(total=total, desc="zeiler2012", unit="run", file=sys.stderr)  # stderr: stdout stays clean
    runs = run_all(first, seeds, data, preset["epochs"], backend, bar)
    runs += run_all(checks, seeds, data, preset["epochs"], backend, bar, curves=False)
    runs += run_all(noise_settings(best_learning_rates(runs)), seeds, data, preset["epochs"], backend, bar)
    bar.close()

    metadata = describe(torch.device("cpu")) | {
        "arguments": list(sys.argv[1:] if argv is None else argv),
        "seconds": time.perf_counter() - started,
        "settings": dict(epochs=preset["epochs"], seeds=seeds, batch=BATCH, hidden=HIDDEN, backend=backend,
                         train_size=len(data.train_y), test_size=len(data.test_y), split_seed=SPLIT_SEED,
                         noise="std = scale x the gradient tensor's RMS",
                         curves="after every epoch; --check-torch's runs after the last epoch only"),
    }
    check = check_against_torch(runs) if args.check_torch else None
    if check is not None:
        comparisons = dict(float64=check.float64, float32=check.float32, control=check.control)
        metadata["torch_check"] = {name: asdict(c) | {"max_cell_difference": c.max_cell_difference}
                                   for name, c in comparisons.items()} | {"passed": check.passed}
    args.out.mkdir(parents=True, exist_ok=True)
    curves = curves_to_plot(runs, errors_by_setting(runs))
    write_plot(curves, args.out / "learning_curves.png")
    write_report(args.out / "report.md", runs, metadata, curves, check, "learning_curves.png")
    write_results(args.out / "results.json", runs, metadata)
    for name in ("report.md", "learning_curves.png", "results.json"):
        print(f"wrote {args.out / name}")
    if check is not None and not check.passed:
        print(f"in float64, adadelta_fused differs from torch.optim.Adadelta by "
              f"{check.float64.max_cell_difference:.2f} points in a cell (allowed: {CHECK_TOLERANCE_POINTS})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
