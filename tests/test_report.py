"""`dsbs-report` over a small grid of fake runs: the table's numbers, which result counts
for a run, the plots, the errors, and reading TensorBoard scalars back."""

import contextlib
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import same_color

from dsbs_jax import results, writers
from dsbs_jax.programs import report

ROOT = Path(__file__).resolve().parents[1]
LABEL, RATIONALE = "dsbs_synthetic_label_llm", "dsbs_synthetic_rationale"
METHODS = {"dsbs-llm": "dsbs", "standard-llm": "standard"}
FRACTIONS = (0.5, 1.0)
SEEDS = (0, 1)
GREEDY = {"method": "greedy"}


def _accuracy(method: str, fraction: float, seed: int) -> float:
    """Distinct per run, so that a wrong selection or grouping shows in the numbers."""
    return 40.0 + 10.0 * (method == "dsbs-llm") + 20.0 * fraction + 3.0 * seed + 0.5 * seed**2


def _write_events(directory: Path, values: dict[str, dict[int, float]]) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default():
        for tag, steps in values.items():
            for step, value in steps.items():
                tf.summary.scalar(tag, value, step=step)
    writer.close()


def _result(directory: Path, run: dict, step: int, accuracy: float, **details) -> None:
    results.write_result(
        str(directory),
        LABEL,
        "test",
        step,
        {"accuracy": accuracy},
        [{"input": "q", "target": "a", "prediction": "a"}],
        checkpoint=os.path.join(run["model_dir"], "checkpoints", str(step)),
        run=run,
        decoding=GREEDY,
        **details,
    )


def _make_run(root: Path, method: str, fraction: float, seed: int) -> tuple[dict, float]:
    """A run dir with run.json, train/validation events and its final evaluation (plus a
    rationale result and a validation result, which the report ignores). Returns the run
    info and the accuracy the report should use for it."""
    model_dir = root / f"{method}_f{fraction}_s{seed}"
    run = results.run_info(
        str(model_dir), METHODS[method], LABEL, RATIONALE, train_fraction=fraction, seed=seed
    )
    results.write_run(str(model_dir), run)
    _write_events(model_dir / "train", {"loss": {s: 3.0 / (s + 1) + seed for s in range(0, 40, 5)}})
    _write_events(model_dir / "validation", {"accuracy": {s: 2.0 * s for s in range(0, 40, 10)}})
    accuracy = _accuracy(method, fraction, seed)
    _result(model_dir / "eval", run, 200, accuracy)
    results.write_result(
        str(model_dir / "eval"), RATIONALE, "test", 200, {"accuracy": 1.0}, [], run=run
    )
    results.write_result(
        str(model_dir / "eval"), LABEL, "validation", 200, {"accuracy": 2.0}, [], run=run
    )
    return run, accuracy


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, dict]:
    """2 methods x 2 fractions x 2 seeds, with two special cases of selection: an earlier
    result (step 100) that loses to step 200, and a result selected on validation (step 50,
    in a dsbs-eval output dir) that wins over step 200. Returns the root and the accuracies
    the report should use per (method, fraction)."""
    root = tmp_path_factory.mktemp("runs")
    expected: dict[tuple[str, float], list[float]] = {}
    for method in METHODS:
        for fraction in FRACTIONS:
            for seed in SEEDS:
                run, accuracy = _make_run(root, method, fraction, seed)
                if (method, fraction, seed) == ("dsbs-llm", 0.5, 0):
                    _result(Path(run["model_dir"]) / "eval", run, 100, 99.0)
                if (method, fraction, seed) == ("standard-llm", 1.0, 1):
                    accuracy = 12.5
                    selected = {"split": "validation", "metric": "accuracy", "value": 20.0}
                    _result(root / "dsbs_eval_output", run, 50, accuracy, selected_on=selected)
                expected.setdefault((method, fraction), []).append(accuracy)
    return root, expected


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = report.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def reported(grid, tmp_path_factory) -> tuple[Path, str]:
    root, _ = grid
    output_dir = tmp_path_factory.mktemp("report")
    code, out, err = _main(str(root), "--output_dir", str(output_dir))
    assert code == 0, err
    return output_dir, out


def _csv_rows(output_dir: Path) -> list[dict]:
    with open(output_dir / report.TABLE_CSV) as f:
        return list(csv.DictReader(f))


def test_table_means_and_stds(grid, reported):
    _, expected = grid
    output_dir, _ = reported
    rows = _csv_rows(output_dir)
    assert [(r["method"], float(r["fraction_percent"])) for r in rows] == [
        ("dsbs-llm", 50.0),
        ("dsbs-llm", 100.0),
        ("standard-llm", 50.0),
        ("standard-llm", 100.0),
    ]
    for row in rows:
        values = expected[row["method"], float(row["fraction_percent"]) / 100]
        assert row["dataset"] == "synthetic"
        assert int(row["n"]) == len(SEEDS)
        assert float(row["mean"]) == pytest.approx(np.mean(values))
        assert float(row["std"]) == pytest.approx(np.std(values, ddof=1))


def test_selection_latest_step_and_selected_on(grid, reported):
    """The step-100 result (99.0) and the unselected step-200 one do not count."""
    output_dir, _ = reported
    rows = {(r["method"], r["fraction_percent"]): r for r in _csv_rows(output_dir)}
    dsbs = [_accuracy("dsbs-llm", 0.5, seed) for seed in SEEDS]
    standard = [_accuracy("standard-llm", 1.0, 0), 12.5]
    assert float(rows["dsbs-llm", "50.0"]["mean"]) == pytest.approx(np.mean(dsbs))
    assert float(rows["standard-llm", "100.0"]["mean"]) == pytest.approx(np.mean(standard))


def test_printed_and_markdown_table(reported):
    output_dir, out = reported
    table = (output_dir / report.TABLE_MD).read_text()
    assert table in out
    lines = table.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == list(report.HEADER)
    assert len(lines) == 2 + 4 and len({len(line) for line in lines}) == 1
    assert "| dsbs-llm     | synthetic |      50% |" in lines[2]
    for name in (report.TABLE_MD, report.TABLE_CSV, report.FRACTION_PLOT, report.CURVES_PLOT):
        assert str(output_dir / name) in out


def test_rationale_tasks_and_other_splits_ignored(grid, tmp_path):
    """Only the rationale and validation results left: nothing to report."""
    root, _ = grid
    lone = tmp_path / "lone"
    run = results.run_info(str(lone), "dsbs", LABEL, RATIONALE, train_fraction=1.0, seed=0)
    results.write_result(str(lone), RATIONALE, "test", 1, {"accuracy": 1.0}, [], run=run)
    results.write_result(str(lone), LABEL, "validation", 1, {"accuracy": 1.0}, [], run=run)
    assert _main(str(lone), "--output_dir", str(tmp_path / "out"))[0] == 1
    code, _, _ = _main(str(root), "--split", "validation", "--output_dir", str(tmp_path / "v"))
    assert code == 0
    assert {float(r["mean"]) for r in _csv_rows(tmp_path / "v")} == {2.0}


def _scores(root: Path) -> list[report.Score]:
    found = report.collect([str(root)], "test", "accuracy")
    return [report.score(result, "accuracy") for result in report.select(found)]


def test_the_fraction_plot_draws_each_methods_means_and_stds(grid, reported):
    root, expected = grid
    figure = report.fraction_figure(report.group(_scores(root)), "accuracy", "test")
    (ax,) = figure.axes
    colours = report.method_colours(METHODS)
    drawn = {container.get_label(): container for container in ax.containers}
    assert set(drawn) == set(METHODS)
    for method, container in drawn.items():
        line, _, (bars,) = container.lines
        runs = [expected[method, fraction] for fraction in FRACTIONS]
        assert list(line.get_xdata()) == [100 * fraction for fraction in FRACTIONS]
        assert list(line.get_ydata()) == pytest.approx([np.mean(r) for r in runs])
        spreads = [(top[1] - bottom[1]) / 2 for bottom, top in bars.get_segments()]
        assert spreads == pytest.approx([np.std(r, ddof=1) for r in runs])
        assert same_color(line.get_color(), colours[method])
    output_dir, _ = reported
    assert (output_dir / report.FRACTION_PLOT).read_bytes() == report.png(figure)


def test_the_learning_curves_draw_every_runs_events(grid, reported):
    root, _ = grid
    runs = report.curve_runs(_scores(root))
    figure = report.curves_figure(runs, "accuracy")
    loss_ax, metric_ax = figure.axes
    assert len(runs) == len(loss_ax.lines) == len(metric_ax.lines) == 8
    colours = report.method_colours(METHODS)
    for run, loss, metric in zip(runs, loss_ax.lines, metric_ax.lines, strict=True):
        assert list(loss.get_xdata()) == list(range(0, 40, 5))
        assert list(loss.get_ydata()) == pytest.approx(
            [3 / (s + 1) + run.seed for s in range(0, 40, 5)]
        )
        assert list(metric.get_xdata()) == list(range(0, 40, 10))
        assert list(metric.get_ydata()) == pytest.approx([2.0 * s for s in range(0, 40, 10)])
        assert same_color(loss.get_color(), colours[run.method]) and loss.get_label() == (
            f"{run.method} f={report.percent(run.fraction)} seed={run.seed}"
        )
    output_dir, _ = reported
    assert (output_dir / report.CURVES_PLOT).read_bytes() == report.png(figure)


def test_results_without_a_run(tmp_path):
    """A checkpoint from outside any training run is reported under unknown settings."""
    results.write_result(
        str(tmp_path / "eval"),
        "dsbs_cqa_cot_gt",
        "test",
        7,
        {"accuracy": 33.0},
        [],
        checkpoint="/somewhere/checkpoint_7",
        run=None,
        decoding=GREEDY,
    )
    code, out, err = _main(str(tmp_path / "eval"), "--output_dir", str(tmp_path / "out"))
    assert code == 0, err
    assert _csv_rows(tmp_path / "out") == [
        {
            "method": "?",
            "dataset": "cqa",
            "fraction_percent": "",
            "mean": "33.0",
            "std": "",
            "n": "1",
        }
    ]
    assert "no learning curves" in out
    assert not (tmp_path / "out" / report.CURVES_PLOT).exists()


def test_missing_directory(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert report.main([str(tmp_path), str(missing), "--output_dir", str(tmp_path / "o")]) == 2
    assert f"no such directory: {missing}" in capsys.readouterr().err


def test_no_results(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o"), "--metric", "f1"]
    assert report.main(args) == 1
    err = capsys.readouterr().err
    assert "*.metrics.json" in err and "'test'" in err and "'f1'" in err
    assert not (tmp_path / "o").exists()


def test_read_scalars_newest_value_wins(tmp_path):
    """Two event files (a restart): the newer file's value for a step counts, whatever the
    files' names say."""
    _write_events(tmp_path / "first", {"loss": {1: 1.0, 2: 2.0}})
    _write_events(tmp_path / "second", {"loss": {2: 5.0, 3: 3.0}, "other": {2: 9.0}})
    for name, folder, mtime in (("b", "first", 1_000), ("a", "second", 2_000)):
        (path,) = (tmp_path / folder).glob("events.out.tfevents.*")
        path.rename(tmp_path / f"events.out.tfevents.{name}")
        os.utime(tmp_path / f"events.out.tfevents.{name}", (mtime, mtime))
    assert writers.read_scalars(str(tmp_path), "loss") == {1: 1.0, 2: 5.0, 3: 3.0}
    assert writers.read_scalars(str(tmp_path / "absent"), "loss") == {}


def test_module_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, "-m", "dsbs_jax.report", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "--output_dir" in result.stdout
