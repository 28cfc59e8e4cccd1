"""`dsbs-report`: the paper's table and figures from the results evaluations left behind.

    dsbs-report DIR [DIR ...] --output_dir OUT [--split test] [--metric accuracy]

A grid of training runs (methods x training-data fractions x seeds) leaves one metrics
JSON per evaluation, scattered over run dirs and eval output dirs. This gathers them
(each DIR is searched recursively), keeps one result per run and label task (the one
dsbs-eval selected on validation, else the latest step), and writes, into OUT:

- `report.md` and `report.csv`: mean and sample std over seeds per method, dataset and
  fraction (also printed);
- `accuracy_vs_fraction.png`: the metric against the training-data fraction, one panel
  per dataset and one line per method (the paper's main figure);
- `learning_curves.png`: training loss and the validation metric against the step, one
  line per run, read from the runs' TensorBoard events.
"""

import argparse
import csv
import dataclasses
import io
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from etils import epath
from matplotlib.figure import Figure

from dsbs_jax import cli, console, results
from dsbs_jax.files import check_folder, write_atomically

LABEL_KINDS = ("_label_", "_cot_")
UNKNOWN = "?"
TABLE_MD, TABLE_CSV = "report.md", "report.csv"
FRACTION_PLOT, CURVES_PLOT = "accuracy_vs_fraction.png", "learning_curves.png"


@dataclasses.dataclass(frozen=True)
class Score:
    """One run's metric on one label task (the selected result)."""

    method: str
    dataset: str
    fraction: float | None
    seed: int | None
    value: float
    model_dir: str | None


@dataclasses.dataclass(frozen=True)
class Group:
    """A table row: the scores of one method, dataset and fraction over seeds."""

    method: str
    dataset: str
    fraction: float | None
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None for a single seed."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None


# -------------------------------------------------------------------------------------------
# Results
# -------------------------------------------------------------------------------------------


def collect(directories: Iterable[str], split: str, metric: str) -> list[dict[str, Any]]:
    """Every label-task result on `split` that has `metric`, under any of `directories`."""
    return [
        result
        for directory in directories
        for result in results.find_results(directory)
        if any(kind in result["task"] for kind in LABEL_KINDS)
        and result["split"] == split
        and metric in result["metrics"]
    ]


def run_key(result: dict[str, Any]) -> str:
    """The training run a result belongs to: its MODEL_DIR, else its checkpoint."""
    run = result.get("run")
    return run["model_dir"] if run else str(result.get("checkpoint") or result["path"])


def select(found: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per (run, task): the one selected on validation, else the latest step."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for result in found:
        key = (run_key(result), result["task"])
        rank = ("selected_on" in result, result["step"])
        if key not in best or rank > ("selected_on" in best[key], best[key]["step"]):
            best[key] = result
    return list(best.values())


def score(result: dict[str, Any], metric: str) -> Score:
    run = result.get("run") or {}
    return Score(
        method=run.get("method", UNKNOWN),
        dataset=results.dataset_name(result["task"]),
        fraction=run.get("train_fraction"),
        seed=run.get("seed"),
        value=float(result["metrics"][metric]),
        model_dir=run.get("model_dir"),
    )


def group(scores: Iterable[Score]) -> list[Group]:
    """Scores grouped by method, dataset and fraction; sorted by dataset, method, fraction."""
    values = defaultdict(list)
    for s in scores:
        values[s.method, s.dataset, s.fraction].append(s.value)
    groups = [Group(m, d, f, tuple(v)) for (m, d, f), v in values.items()]
    return sorted(groups, key=lambda g: (g.dataset, g.method, g.fraction is None, g.fraction or 0))


# -------------------------------------------------------------------------------------------
# Table
# -------------------------------------------------------------------------------------------

HEADER = ("method", "dataset", "fraction", "mean", "std", "n")
NUMERIC = (False, False, True, True, True, True)  # Right-aligned columns.


def percent(fraction: float | None) -> str:
    return UNKNOWN if fraction is None else f"{100 * fraction:g}%"


def _cells(g: Group) -> tuple[str, ...]:
    std = "" if g.std is None else f"{g.std:.2f}"
    return (g.method, g.dataset, percent(g.fraction), f"{g.mean:.2f}", std, str(len(g.values)))


def markdown_table(groups: Sequence[Group]) -> str:
    """An aligned markdown table: text columns left, numbers right."""
    rows = [_cells(g) for g in groups]
    widths = [max(3, *(len(row[i]) for row in [HEADER, *rows])) for i in range(len(HEADER))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, NUMERIC, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, NUMERIC, strict=True)]
    return "\n".join([line(HEADER), line(rule), *map(line, rows)]) + "\n"


def csv_table(groups: Sequence[Group]) -> str:
    """The table with full-precision numbers; fraction in percent, std blank for one seed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "dataset", "fraction_percent", "mean", "std", "n"])
    for g in groups:
        fraction = "" if g.fraction is None else 100 * g.fraction
        std = "" if g.std is None else g.std
        writer.writerow([g.method, g.dataset, fraction, g.mean, std, len(g.values)])
    return out.getvalue()


# -------------------------------------------------------------------------------------------
# Plots
# -------------------------------------------------------------------------------------------


def method_colours(methods: Iterable[str]) -> dict[str, Any]:
    """The same colour for a method in every plot."""
    return {m: f"C{i % 10}" for i, m in enumerate(sorted(set(methods)))}


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def fraction_figure(groups: Sequence[Group], metric: str, split: str) -> Figure:
    """Mean metric (error bars: std over seeds) against the fraction, one panel per dataset."""
    datasets = sorted({g.dataset for g in groups})
    colours = method_colours(g.method for g in groups)
    figure = Figure(figsize=(5 * len(datasets), 4), layout="constrained")
    axes = figure.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        for method, colour in colours.items():
            points = [
                g
                for g in groups
                if g.dataset == dataset and g.method == method and g.fraction is not None
            ]
            if points:
                ax.errorbar(
                    [100 * g.fraction for g in points],
                    [g.mean for g in points],
                    yerr=[g.std or 0.0 for g in points],
                    label=method,
                    color=colour,
                    marker="o",
                    capsize=3,
                )
        ax.set(title=dataset, xlabel="training data (%)", ylabel=f"{split} {metric}")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    figure.suptitle(f"{split} {metric} against the fraction of training data")
    return figure


def curve_runs(scores: Iterable[Score]) -> list[Score]:
    """One score per run whose MODEL_DIR holds training events, ordered for the legend."""
    runs = {s.model_dir: s for s in scores if s.model_dir}
    present = [s for d, s in runs.items() if epath.Path(d, "train").is_dir()]
    return sorted(present, key=lambda s: (s.method, s.fraction or 0, s.seed or 0, s.model_dir))


def curves_figure(runs: Sequence[Score], metric: str) -> Figure:
    """Training loss and validation metric against the step, one line per run."""
    # Only here: the table and the other plots do without TensorFlow.
    read_scalars = console.quiet_import("dsbs_jax.writers").read_scalars

    colours = method_colours(s.method for s in runs)
    figure = Figure(figsize=(13, 4.5), layout="constrained")
    loss_ax, metric_ax = figure.subplots(1, 2)
    for run in runs:
        label = f"{run.method} f={percent(run.fraction)} seed={run.seed}"
        style = dict(color=colours[run.method], label=label, alpha=0.8)
        for ax, kind, tag in ((loss_ax, "train", "loss"), (metric_ax, "validation", metric)):
            steps = read_scalars(os.path.join(run.model_dir, kind), tag)
            ax.plot(sorted(steps), [steps[s] for s in sorted(steps)], **style)
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    metric_ax.set(title=f"validation {metric}", xlabel="step", ylabel=metric)
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
    metric_ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    return figure


# -------------------------------------------------------------------------------------------
# Binary
# -------------------------------------------------------------------------------------------


def report(
    directories: Sequence[str], output_dir: str, split: str, metric: str
) -> tuple[str, dict[str, str]] | None:
    """Write the table and plots; return the markdown table and the paths written (by file
    name), or None when there are no results."""
    scores = [score(r, metric) for r in select(collect(directories, split, metric))]
    if not scores:
        return None
    groups = group(scores)
    table = markdown_table(groups)
    outputs = {
        TABLE_MD: table,
        TABLE_CSV: csv_table(groups),
        FRACTION_PLOT: png(fraction_figure(groups, metric, split)),
    }
    runs = curve_runs(scores)
    if runs:
        outputs[CURVES_PLOT] = png(curves_figure(runs, metric))
    paths = {name: os.path.join(output_dir, name) for name in outputs}
    for name, data in outputs.items():
        write_atomically(paths[name], data)
    return table, paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsbs-report", description=__doc__.split("\n")[0])
    parser.add_argument("directories", nargs="+", metavar="DIR", help="runs or eval outputs")
    parser.add_argument("--output_dir", required=True, help="where the table and plots go")
    parser.add_argument("--split", default="test", help="the split to report (default: test)")
    parser.add_argument("--metric", default="accuracy", help="the metric (default: accuracy)")
    console.setup(parser, argv)
    args = parser.parse_args(argv)
    return cli.exit_status(parser.prog, lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    if missing := [d for d in args.directories if not epath.Path(d).is_dir()]:
        raise cli.UsageError(f"no such directory: {', '.join(missing)}")
    check_folder(args.output_dir, "--output_dir")
    written = report(args.directories, args.output_dir, args.split, args.metric)
    if written is None:
        print(
            f"dsbs-report: no results in {', '.join(args.directories)}: looked for "
            f"*{results.METRICS_SUFFIX} of a label task (*_label_* or *_cot_*) on split "
            f"'{args.split}' with metric '{args.metric}'",
            file=sys.stderr,
        )
        return 1
    table, paths = written
    print(table)
    if CURVES_PLOT not in paths:
        print("(no learning curves: no run's MODEL_DIR with train/ events was found)")
    print("dsbs-report: wrote\n" + "\n".join(f"  {p}" for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
