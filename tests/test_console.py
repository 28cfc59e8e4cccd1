"""What the binaries print: only our lines before training starts, progress that is honest
about compilation and evaluation, and a summary at the end."""

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import runs

from dsbs_jax import progress
from dsbs_jax.programs import prepare
from dsbs_jax.programs.train import VALIDATION
from dsbs_jax.writers import read_scalars

BIN = Path(sys.executable).parent


def installed(binary: str, *flags: str, **kwargs) -> subprocess.CompletedProcess:
    """The command as installed (`.venv/bin/dsbs-...`), stdout and stderr in one stream."""
    return subprocess.run(
        [str(BIN / binary), *flags],
        cwd=runs.ROOT,
        env=runs.environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tfds_data_dir):
    model_dir = tmp_path_factory.mktemp("short_run")
    result = installed("dsbs-train", *runs.flags(model_dir, tfds_data_dir, 4))
    assert result.returncode == 0, result.stdout[-3000:]
    return model_dir, result.stdout.splitlines()


def test_training_prints_only_our_lines_before_its_first_step(short_run):
    _, lines = short_run
    first = next(i for i, line in enumerate(lines) if line.startswith("compiled and ran step 1"))
    assert first <= 10, lines[:first]
    assert lines[first - 1] == "compiling the train step..."
    assert not [line for line in lines if runs.LIBRARY_LINE.match(line)]
    assert not [line for line in lines if "error" in line.lower()]


def test_the_summary_says_what_was_trained_how_fast_how_well_and_where(short_run):
    model_dir, lines = short_run
    summary = lines[next(i for i, line in enumerate(lines) if "stopped at step" in line) :]
    assert summary[0] == "dsbs-train: stopped at step 4 of 4"
    assert summary[1] == (
        "trained dsbs-llm on synthetic (dsbs_synthetic_label_llm, dsbs_synthetic_rationale), "
        "100% of the training set"
    )
    assert re.fullmatch(r"wall time 0:0\d:\d\d, [\d.]+ examples/s while training", summary[2])
    accuracy = read_scalars(str(model_dir / VALIDATION), "accuracy")
    assert list(accuracy) == [4]
    assert summary[3] == f"best validation accuracy {accuracy[4]:.4g} at step 4"
    assert summary[4].startswith("validation dsbs_synthetic_label_llm: accuracy ")
    assert f"checkpoints: {model_dir}/checkpoints" in summary
    assert f"TensorBoard: tensorboard --logdir {model_dir}" in summary
    assert f"predictions: {model_dir}/eval/dsbs_synthetic_label_llm_validation_4.jsonl" in summary


def test_verbose_shows_the_libraries_load_time_logs_that_are_hidden_otherwise():
    quiet, verbose = (installed("dsbs-train", "--help", *extra) for extra in ([], ["--verbose"]))
    assert quiet.returncode == verbose.returncode == 0
    assert not [line for line in quiet.stdout.splitlines() if runs.LIBRARY_LINE.match(line)]
    assert [line for line in verbose.stdout.splitlines() if runs.LIBRARY_LINE.match(line)]
    assert "--verbose" in quiet.stdout


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_leaves_out_compilation_and_counts_the_evaluations_left():
    """1,000 steps of 0.1 s, evaluated every 250 for 20 s, after 60 s of compilation: the
    ETA at each printed line is the true time left (to the step rate's precision)."""
    clock, stream = Clock(), io.StringIO()
    bar = progress.Progress(1000, eval_period=250, period=10.0, stream=stream, clock=clock)
    bar.compiling()
    clock.now += 60.0
    etas = {}
    for step in range(1, 1001):
        clock.now += 0.1 if step > 1 else 0.0
        bar.update(step, 1.0, 8.0)
        if step % 250 == 0:
            with bar.evaluating():
                clock.now += 20.0
        if bar.eta(step) is not None:
            etas[step] = bar.eta(step)
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["compiling the train step...", "compiled and ran step 1 in 60.0 s"]
    assert "10.00 steps/s  80.0 examples/s" in lines[2]
    for step, eta in etas.items():
        evaluations_left = 4 - step // 250
        truth = (1000 - step) * 0.1 + 20.0 * evaluations_left
        known = 0.0 if step < 250 else 20.0 * evaluations_left  # no evaluation timed yet
        assert eta == pytest.approx((1000 - step) * 0.1 + known, abs=0.5), step
        assert eta <= truth + 0.5
    assert bar.steps_per_second() == pytest.approx(10.0)  # evaluations and compilation out


def test_counters_name_their_job(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(progress, "PERIOD", 0.0)
    prepare.main(["--dataset", "synthetic", "--data_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert f"dsbs-prepare: building dsbs_synthetic in {tmp_path}" in err
    assert re.search(r"^dsbs_synthetic train: 10000/10000 examples \(100%\)  ", err, re.M)
    assert "Downloading and preparing" not in capsys.readouterr().out
