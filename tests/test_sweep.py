"""launch/sweep.py: the paper's grid as commands, grids checked, a small grid run and reported."""

import csv
import importlib.util
import json
import shlex
import signal
import subprocess
import sys
import time

import pytest

import gin
from tests import runs

SWEEP = runs.ROOT / "launch" / "sweep.py"
PAPER_GRID = runs.ROOT / "gin" / "runs" / "paper" / "grid.json"
SYNTHETIC_GRID = runs.ROOT / "gin" / "runs" / "paper" / "synthetic.json"
CHECKPOINTS = {size: f"/models/t5-v1_1-{size}" for size in ("base", "large", "xxl")}
PAPER_METHODS = {  # method -> (MODE, label task kind, rationale task?)
    "standard-gt": ("standard", "label_gt", False),
    "standard-llm": ("standard", "label_llm", False),
    "dsbs-gt": ("dsbs", "label_gt", True),
    "dsbs-llm": ("dsbs", "label_llm", True),
    "cot-gt": ("cot", "cot_gt", False),
    "cot-llm": ("cot", "cot_llm", False),
}


def _sweep_module():
    spec = importlib.util.spec_from_file_location("sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _sweep_module()


def dry_run(*argv: str) -> list[list[str]]:
    """The commands `sweep.py --dry-run` prints, each split as a shell would."""
    run = subprocess.run(
        [sys.executable, str(SWEEP), *argv, "--dry-run"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return [shlex.split(line) for line in run.stdout.splitlines()]


def settings(argv: list[str]) -> dict:
    """The gin macros a printed dsbs-train command resolves to."""
    files = [a.removeprefix("--gin_file=") for a in argv if a.startswith("--gin_file=")]
    bindings = [a.removeprefix("--gin.") for a in argv if a.startswith("--gin.")]
    gin.clear_config()
    from dsbs_jax import gin_utils

    gin_utils.parse(files, bindings)
    names = ("MODE", "LABEL_TASK", "RATIONALE_TASK", "TASK_FEATURE_LENGTHS", "MODEL_DIR")
    names += ("TRAIN_STEPS", "BATCH_SIZE", "ALPHA", "TRAIN_FRACTION", "SEED")
    names += ("INITIAL_CHECKPOINT_PATH", "TEACHER_CHECKPOINT_PATH", "KD_WEIGHT")
    values = {name: _resolved(gin.query_parameter(f"%{name}")) for name in names}
    values["learning_rate"] = gin.query_parameter("optimizers.adamw.learning_rate")
    return values


def _resolved(value):
    """A macro's value with the macros it refers to (`%NAME`, as gin reports them) evaluated."""
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    if isinstance(value, gin.config.ConfigurableReference):
        return value.scoped_configurable_fn()
    return value


# Each dataset's (inputs, label, rationale, chain of thought) lengths in the grid: what
# holds the release's longest example (gin/runs/paper/dataset/*.gin says how measured).
GRID_LENGTHS = {
    "cqa": (128, 16, 96, 96),
    "svamp": (128, 32, 160, 192),
    "esnli": (128, 8, 128, 128),
    "anli1": (384, 8, 192, 192),
}


def test_the_paper_grid_prints_one_command_per_run_with_its_bindings():
    checkpoints = [f"--gin.{s.upper()}_CHECKPOINT='{path}'" for s, path in CHECKPOINTS.items()]
    commands = dry_run(str(PAPER_GRID), "--root", "gs://bucket/paper", *checkpoints)
    assert len(commands) == 4 * 6 * 3 * 5 * 3
    model_dirs = set()
    for argv in commands:
        assert argv[:2] == ["launch/local.sh", "dsbs-train"]
        model_dirs.add(next(a for a in argv if a.startswith("--gin.MODEL_DIR=")))
    assert len(model_dirs) == len(commands)
    # Every dataset x method x size resolves to the paper's settings (seed and fraction vary).
    seen = 0
    for argv in commands:
        model_dir = next(a for a in argv if a.startswith("--gin.MODEL_DIR=")).split("=", 1)[1]
        name = model_dir.strip("'").removeprefix("gs://bucket/paper/")
        chosen = dict(part.split("=") for part in name.split(","))
        if chosen["train_fraction"] != "0.25" or chosen["seed"] != "1":
            continue
        seen += 1
        values = settings(argv)
        mode, kind, with_rationale = PAPER_METHODS[chosen["method"]]
        dataset, size = chosen["dataset"], chosen["size"]
        assert values["MODE"] == mode
        assert values["LABEL_TASK"] == f"dsbs_{dataset}_{kind}"
        assert values["RATIONALE_TASK"] == (f"dsbs_{dataset}_rationale" if with_rationale else None)
        lengths = values["TASK_FEATURE_LENGTHS"]
        inputs, label, rationale, cot = GRID_LENGTHS[dataset]
        expected = {"inputs": inputs, "label": cot if mode == "cot" else label} | (
            {"rationale": rationale} if with_rationale else {}
        )
        assert lengths == expected
        assert values["MODEL_DIR"] == f"gs://bucket/paper/{name.rstrip(chr(39))}"
        assert (values["TRAIN_FRACTION"], values["SEED"]) == (0.25, 1)
        assert (values["TRAIN_STEPS"], values["BATCH_SIZE"]) == (
            (4000, 32) if size == "xxl" else (10000, 64)
        )
        assert values["ALPHA"] == 0.5 and values["learning_rate"] == 5e-5
        assert values["INITIAL_CHECKPOINT_PATH"] == CHECKPOINTS[size]
    assert seen == 4 * 6 * 3


def test_only_selects_and_extra_bindings_come_last():
    commands = dry_run(
        str(PAPER_GRID),
        "--root=/runs",
        "--only",
        "dataset=svamp,cqa",
        "--only",
        "method=dsbs-llm",
        "--only=size=base",
        "--only=SEED=2",
        "--launcher",
        "bash launch/slurm.sbatch",
        "--gin.INPUT_LENGTH=256",
    )
    assert len(commands) == 2 * 5
    first = commands[0]
    assert first[:3] == ["bash", "launch/slurm.sbatch", "dsbs-train"]
    assert "--gin_file=runs/paper/dataset/svamp.gin" in first
    assert first[-1] == "--gin.INPUT_LENGTH=256"
    assert first[-3:-1] == ["--gin.TRAIN_FRACTION=0.125", "--gin.SEED=2"]
    assert "dataset=svamp,method=dsbs-llm,size=base,train_fraction=0.125,seed=2" in first[-4]


def test_the_distillation_grid_is_the_data_efficiency_runs_with_a_teacher():
    """synthetic_kd.json: the dsbs-gt runs of synthetic.json at two fractions, plus the KL."""
    teacher = ["--gin.TEACHER_CHECKPOINT_PATH='/t'", "--gin.KD_WEIGHT=0.5"]
    commands = dry_run(str(SYNTHETIC_GRID.with_name("synthetic_kd.json")), "--root=/r", *teacher)
    plain = dry_run(str(SYNTHETIC_GRID), "--root=/r", "--only=method=dsbs-gt")
    fractions = {"0.125", "0.5"}
    same = [argv for argv in plain if argv[-1].removeprefix("--gin.TRAIN_FRACTION=") in fractions]
    assert len(commands) == len(same) == 6
    assert [argv[:-2] for argv in commands] == same
    values = settings(commands[0])
    assert (values["TEACHER_CHECKPOINT_PATH"], values["KD_WEIGHT"]) == ("/t", 0.5)
    assert values["MODE"] == "dsbs" and values["TRAIN_STEPS"] == 1000


def sweep_on(topology: str, *argv: str) -> tuple[dict[str, list[str]], str]:
    """Each size's dry-run command on `topology` (CQA, dsbs-llm, one fraction and seed) and
    the notes on stderr."""
    run = subprocess.run(
        [sys.executable, str(SWEEP), str(PAPER_GRID), "--root=gs://b/r", "--dry-run"]
        + ["--only=dataset=cqa", "--only=method=dsbs-llm", "--only=TRAIN_FRACTION=1.0"]
        + ["--only=SEED=0", f"--topology={topology}", *argv],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    commands = [shlex.split(line) for line in run.stdout.splitlines()]
    by_size = {argv[5].rsplit("/", 1)[1].removesuffix(".gin"): argv for argv in commands}
    return by_size, run.stderr


def mesh(fsdp: int, model: int) -> list[str]:
    return [f"--gin.train.fsdp_parallelism={fsdp}", f"--gin.train.model_parallelism={model}"]


def test_a_topology_gives_each_size_the_mesh_dsbs_fit_measured():
    """On a v4-32: XXL as measured there, base and large as on a v4-8 with more data
    replicas; the mesh comes after the grid's macros and before the bindings given here."""
    extra = "--gin.XXL_CHECKPOINT='/m'"
    commands, notes = sweep_on("v4-32", extra)
    assert list(commands) == ["base", "large", "xxl"]
    for size, (fsdp, model) in {"base": (1, 1), "large": (1, 1), "xxl": (4, 4)}.items():
        macros = ["--gin.TRAIN_FRACTION=1.0", "--gin.SEED=0"]
        assert commands[size][-5:] == [*macros, *mesh(fsdp, model), extra]
    assert notes.splitlines() == [
        "sweep: mesh for base on v4-32: data 16 x fsdp 1 x model 1 (dsbs-fit on v4-8: 5.95 GiB "
        "of 30.75 per chip, BENCHMARKS.md; v4-32's other chips add data replicas)",
        "sweep: mesh for large on v4-32: data 16 x fsdp 1 x model 1 (dsbs-fit on v4-8: 16.90 GiB "
        "of 30.75 per chip, BENCHMARKS.md; v4-32's other chips add data replicas)",
        "sweep: mesh for xxl on v4-32: data 1 x fsdp 4 x model 4 (dsbs-fit: 12.89 GiB of 30.75 "
        "per chip, BENCHMARKS.md)",
    ]


def test_a_topology_leaves_a_mesh_given_here_and_unmeasured_sizes_alone():
    commands, notes = sweep_on("v4-8")
    assert commands["base"][-2:] == mesh(1, 1) and commands["large"][-2:] == mesh(1, 1)
    assert commands["xxl"][-1] == "--gin.SEED=0"  # size/xxl.gin's own mesh
    assert "sweep: mesh unknown: no dsbs-fit figure for xxl on v4-8" in notes
    assert "run dsbs-fit --topology v4-8 first" in notes

    commands, notes = sweep_on("v4-32", "--gin.train.model_parallelism=8")
    for argv in commands.values():
        assert argv[-2:] == ["--gin.SEED=0", "--gin.train.model_parallelism=8"]
    assert notes == "sweep: mesh: the command line's (train.model_parallelism=8)\n"


@pytest.mark.parametrize(
    ("grid", "only", "message"),
    [
        ({"axes": {"method": ["nope"]}}, [], "has no gin file method/nope.gin"),
        ({"axes": {}}, [], "non-empty 'axes'"),
        ({"axes": {"SEED": [0]}, "extra": 1}, [], "unknown keys ['extra']"),
        ({"axes": {"Seed": [0]}}, [], "lower case (files) or upper case"),
        ({"axes": {"SEED": [[0]]}}, [], "expected a number or a string"),
        ({"axes": {"SEED": [0, 1]}}, ["SEED=3"], "['3'] not in SEED's values ['0', '1']"),
        ({"axes": {"SEED": [0, 1]}}, ["seed=0"], "AXIS in ['SEED']"),
        ({"axes": {"method": ["../x"]}}, [], "axis value '../x': expected letters"),
        ({"axes": {"TAG": ["a,b=c"]}}, [], "axis value 'a,b=c': expected letters"),
    ],
)
def test_bad_grids_and_selections_are_named(grid, only, message, tmp_path, capsys):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    argv = [str(path), "--root", str(tmp_path / "runs"), *[f"--only={o}" for o in only]]
    assert sweep.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_unreadable_grid_is_named(tmp_path, capsys):
    path = tmp_path / "grid.json"
    path.write_text("{not json")
    assert sweep.main([str(path), "--root", str(tmp_path)]) == 2
    assert f"{path}: cannot read the grid" in capsys.readouterr().err


def test_a_bad_parallel_count_remote_logs_and_an_unknown_slice_are_refused(tmp_path, capsys):
    assert sweep.main([str(SYNTHETIC_GRID), "--root", str(tmp_path), "--parallel=0"]) == 2
    assert "--parallel 0: expected 1 or more" in capsys.readouterr().err
    assert sweep.main([str(SYNTHETIC_GRID), "--root", "gs://b/r", "--parallel=2"]) == 2
    assert "give --log_dir" in capsys.readouterr().err
    assert sweep.main([str(SYNTHETIC_GRID), "--root", str(tmp_path), "--topology=v4-9"]) == 2
    assert "--topology v4-9: expected a TPU slice (v4-8, v4-16," in capsys.readouterr().err


def test_a_relative_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (first, *_) = dry_run(str(SYNTHETIC_GRID), "--root", "runs")
    assert f"--gin.MODEL_DIR='{tmp_path}/runs/seed=0,dataset=synthetic," in " ".join(first)


def launch_with(launcher: str, root, *argv: str) -> subprocess.CompletedProcess:
    """The synthetic grid's first seed through a stand-in launcher (`true`, `false`)."""
    return subprocess.run(
        [sys.executable, str(SWEEP), str(SYNTHETIC_GRID), "--root", str(root), "--only=SEED=0"]
        + ["--launcher", launcher, *argv],
        capture_output=True,
        text=True,
    )


def test_failed_runs_are_reported_the_others_run_and_nothing_is_marked(tmp_path):
    result = launch_with("false", tmp_path, "--parallel=2")
    assert result.returncode == 1
    assert result.stdout.count("FAILED (exit 1)") == 16
    assert "sweep: 16 failed: seed=0,dataset=synthetic,method=standard-gt" in result.stderr
    assert not list(tmp_path.glob(f"*/{sweep.LAUNCHED}"))
    assert len(list((tmp_path / "logs").glob("*.log"))) == 16


def test_launched_runs_are_recorded_and_skipped_the_next_time(tmp_path):
    assert launch_with("true", tmp_path, "--only=method=dsbs-gt").returncode == 0
    (marker,) = tmp_path.glob(f"*method=dsbs-gt,train_fraction=0.5/{sweep.LAUNCHED}")
    assert json.loads(marker.read_text())["command"][:2] == ["true", "dsbs-train"]
    marker.unlink()  # this one is launched again
    again = launch_with("true", tmp_path, "--only=method=dsbs-gt")
    assert again.stdout.count("launched before, skipped") == 3
    assert again.stdout.count("finished;") == 1 and marker.exists()


ONE_RUN = ("--only=method=dsbs-gt", "--only=TRAIN_FRACTION=0.5")


def preempted_twice(tmp_path) -> str:
    """A launcher that exits as a preempted dsbs-train (75) on its first two launches."""
    script = tmp_path / "launcher.sh"
    script.write_text(
        f"n=$(( $(cat {tmp_path}/launches 2>/dev/null || echo 0) + 1 ))\n"
        f"echo $n > {tmp_path}/launches\n"
        "((n > 2)) || exit 75\n"
    )
    return f"bash {script}"


def test_a_preempted_run_is_launched_again_and_finishes(tmp_path):
    result = launch_with(preempted_twice(tmp_path), tmp_path / "runs", *ONE_RUN)
    assert result.returncode == 0, result.stderr
    assert "(resuming, 1 of 3)" in result.stdout and "(resuming, 2 of 3)" in result.stdout
    assert "finished; 1/1 done" in result.stdout
    assert (tmp_path / "launches").read_text() == "3\n"
    assert len(list(tmp_path.glob(f"runs/*/{sweep.LAUNCHED}"))) == 1


def test_a_run_still_preempted_is_left_for_the_next_sweep(tmp_path):
    launcher = preempted_twice(tmp_path)
    first = launch_with(launcher, tmp_path / "runs", *ONE_RUN, "--max_resumes=1")
    assert first.returncode == sweep.PREEMPTED_EXIT == 75, first.stderr
    name = "seed=0,dataset=synthetic,method=dsbs-gt,train_fraction=0.5"
    assert f"sweep: 1 preempted, to resume: {name}" in first.stderr
    assert "preempted (exit 75), not finished" in first.stdout
    assert not list(tmp_path.glob(f"runs/*/{sweep.LAUNCHED}"))
    second = launch_with(launcher, tmp_path / "runs", *ONE_RUN, "--max_resumes=1")
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "runs" / name / sweep.LAUNCHED).exists()


def test_sigterm_to_the_sweep_reaches_its_runs_and_starts_no_more(tmp_path):
    script = tmp_path / "launcher.sh"
    script.write_text(
        f"trap 'kill $!; echo stopped >> {tmp_path}/stopped; exit 75' TERM\n"
        f"echo started >> {tmp_path}/started\n"
        "sleep 120 &\nwait\n"
    )
    root = tmp_path / "runs"
    argv = [str(SYNTHETIC_GRID), "--root", str(root), "--only=SEED=0", "--parallel=2"]
    process = subprocess.Popen(
        [sys.executable, str(SWEEP), *argv, "--launcher", f"bash {script}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = tmp_path / "started"
    deadline = time.monotonic() + 120
    while not (started.exists() and len(started.read_text().split()) == 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == sweep.PREEMPTED_EXIT, stderr
    assert "stopped by SIGTERM: run the same command to go on" in stderr
    assert (tmp_path / "stopped").read_text().split() == ["stopped", "stopped"]
    assert started.read_text().split() == ["started", "started"]  # no third run started
    assert stdout.count("preempted (exit 75), not finished") == 2, stdout
    assert not list(root.glob(f"*/{sweep.LAUNCHED}"))


def test_shell_lines_split_back_into_the_same_words():
    argv = ["a b", "--gin.X='/p q'", "it's", 'say "hi"', "$HOME", "plain"]
    line = sweep.shell_line(argv)
    assert shlex.split(line) == argv
    assert "\"--gin.X='/p q'\"" in line


@pytest.mark.slow
def test_a_two_run_grid_runs_locally_is_reported_and_resumes(tfds_data_dir, tmp_path):
    root = tmp_path / "sweep"
    argv = [
        str(SYNTHETIC_GRID),
        "--root",
        str(root),
        "--only=method=standard-llm,dsbs-gt",
        "--only=TRAIN_FRACTION=0.5",
        "--only=SEED=1",
        "--parallel=2",
        "--report",
        f"--gin.DATA_DIR='{tfds_data_dir}'",
        "--gin.TRAIN_STEPS=4",
        "--gin.BATCH_SIZE=8",
        "--gin.Evaluation.examples=16",
        *runs.TINY_MODEL,
    ]
    sweep_run = subprocess.run(
        [sys.executable, str(SWEEP), *argv],
        cwd=runs.ROOT,
        env=runs.environment(),
        capture_output=True,
        text=True,
    )
    assert sweep_run.returncode == 0, sweep_run.stderr[-3000:] + sweep_run.stdout[-3000:]
    names = [
        "seed=1,dataset=synthetic,method=standard-llm,train_fraction=0.5",
        "seed=1,dataset=synthetic,method=dsbs-gt,train_fraction=0.5",
    ]
    for name in names:
        assert (root / name / sweep.LAUNCHED).exists()
        info = json.loads((root / name / "run.json").read_text())
        assert (info["train_fraction"], info["seed"], info["train_steps"]) == (0.5, 1, 4)
        assert "step 4/4" in (root / "logs" / f"{name}.log").read_text()
    with open(root / "report" / "report.csv") as table:
        rows = {row["method"]: row for row in csv.DictReader(table)}
    assert set(rows) == {"standard-llm", "dsbs-gt"}
    for method, name in zip(("standard-llm", "dsbs-gt"), names, strict=True):
        (metrics,) = (root / name / "eval").glob("*_test_4.metrics.json")
        accuracy = json.loads(metrics.read_text())["metrics"]["accuracy"]
        assert float(rows[method]["mean"]) == pytest.approx(accuracy)
        assert (float(rows[method]["fraction_percent"]), rows[method]["n"]) == (50, "1")
    # The same command again finds both runs finished and trains nothing.
    again = subprocess.run(
        [sys.executable, str(SWEEP), *argv], cwd=runs.ROOT, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("launched before, skipped") == 2
