"""The commands and code of README and the docs pages, run as written, in reading order
(each page's commands build on the ones before; the install step is CI's own)."""

import collections
import csv
import itertools
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest
import runs
from rouge_score import rouge_scorer

from dsbs_jax.programs import report

ROOT = pathlib.Path(__file__).resolve().parents[1]
# README's table of docs pages, in its order: the order their commands run in.
DOCS = re.findall(r"^\| \[(docs/\w+\.md)\]", (ROOT / "README.md").read_text(), re.M)
README = "\n".join((ROOT / page).read_text() for page in ["README.md", *DOCS])
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# A binary (after environment settings such as PYTHONPATH=...), or a shell line making files.
TOOL = re.compile(r"(?:[A-Z_]+=\S+ )*\.venv/bin/dsbs-")
SHELL_PREFIXES = ("printf ", "mkdir -p ")
TOOL_COMMANDS = [
    line
    for block in re.findall(r"```bash\n(.*?)```", README, re.S)
    for line in block.splitlines()
    if TOOL.match(line) or line.startswith(SHELL_PREFIXES)
]
# Commands for machines CI does not have (```sh blocks): their flags and gin are checked.
SH_COMMANDS = [block.replace("\\\n", " ") for block in re.findall(r"```sh\n(.*?)```", README, re.S)]
# The quickstart's test accuracy must be at least this multiple of the majority baseline.
QUICKSTART_FLOOR = 3


def run_tool(command: str, tmp_path: pathlib.Path) -> list[tuple[float, str]]:
    """Run a README command with this venv's console scripts, writing under `tmp_path`;
    returns its output lines (stdout and stderr as they came), each with the seconds since
    the command started."""
    env = dict(os.environ)
    if command.startswith(SHELL_PREFIXES):  # files the next commands read
        argv = ["bash", "-c", command.replace("/tmp/", f"{tmp_path}/")]
    else:
        argv = [a.replace("/tmp/", f"{tmp_path}/") for a in shlex.split(command)]
        while "=" in argv[0]:  # NAME=VALUE before the binary
            name, value = argv.pop(0).split("=", 1)
            env[name] = value
        argv[0] = str(pathlib.Path(sys.executable).parent / argv[0].removeprefix(".venv/bin/"))
    start = time.monotonic()
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = [(time.monotonic() - start, line.rstrip("\n")) for line in process.stdout]
    assert process.wait() == 0, "\n".join([command, *(line for _, line in lines[-40:])])
    return lines


@pytest.fixture(scope="module")
def readme_tmp(tmp_path_factory) -> pathlib.Path:
    """One folder for the whole README: its commands build on each other, in order."""
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def quickstart(readme_tmp) -> dict[str, list[tuple[float, str]]]:
    """The first line's commands after the install (CI's own): prepare, then train; the
    output lines of each."""
    first_line = README.split("```bash\n", 1)[1].splitlines()[0]
    commands = [c for c in first_line.split(" && ") if c.startswith(".venv/bin/dsbs-")]
    assert [c.split()[0] for c in commands] == [".venv/bin/dsbs-prepare", ".venv/bin/dsbs-train"]
    return {c.split()[0].removeprefix(".venv/bin/dsbs-"): run_tool(c, readme_tmp) for c in commands}


def text(lines: list[tuple[float, str]]) -> str:
    return "\n".join(line for _, line in lines)


@pytest.mark.slow
def test_quickstart_learns_well_above_the_majority_baseline(quickstart, readme_tmp):
    (predictions,) = (readme_tmp / "dsbs_quickstart/model/eval").glob("*_test_*.jsonl")
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 300 and len({r["id"] for r in rows}) == 300
    accuracy = sum(r["parsed_prediction"] == r["target"] for r in rows) / len(rows)
    assert accuracy == sum(r["correct"] for r in rows) / len(rows)
    majority = collections.Counter(r["target"] for r in rows).most_common(1)[0][1] / len(rows)
    print(f"quickstart test accuracy {accuracy:.1%}, majority baseline {majority:.1%}")
    output = text(quickstart["train"])
    assert f"test dsbs_synthetic_label_llm: accuracy {100 * accuracy:.1f}" in output
    assert accuracy >= QUICKSTART_FLOOR * majority, (accuracy, majority)
    assert "TensorBoard: tensorboard --logdir" in output


@pytest.mark.slow
def test_the_quickstart_prints_ten_lines_of_ours_then_an_honest_eta(quickstart):
    prepare, train = quickstart["prepare"], quickstart["train"]
    first_step = next(i for i, (_, line) in enumerate(train) if line.startswith("compiled and"))
    before = [line for _, line in prepare + train[:first_step]]
    assert len(before) <= 10, before
    assert not [line for line in before if runs.LIBRARY_LINE.match(line)], before
    assert not [line for _, line in prepare + train if "error" in line.lower()]
    # The first ETA against the time the training loop (its last evaluation) really took.
    when, eta = next((t, line) for t, line in train if " ETA " in line)
    hours, minutes, seconds = map(int, eta.split(" ETA ")[1].split(":"))
    end = next(t for t, line in train if line.startswith("step 1500 validation:"))
    estimate, truth = 3600 * hours + 60 * minutes + seconds, end - when
    print(f"quickstart: {len(before)} lines before step 1; first ETA {estimate} s, {truth:.0f} s")
    assert truth / 2 <= estimate <= 2 * truth, (eta, truth)


@pytest.mark.parametrize("command", TOOL_COMMANDS)
def test_tool_commands_run(command, quickstart, readme_tmp):
    """Each runs, and prints no line of TensorFlow's, XLA's or absl's logs."""
    lines = run_tool(command, readme_tmp)
    assert not [line for _, line in lines if runs.LIBRARY_LINE.match(line)], text(lines)


def _rows(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_evaluation_agrees_with_its_predictions_and_with_training(readme_tmp):
    (selected,) = (readme_tmp / "dsbs_quickstart/eval").glob("*_label_llm_test_*.metrics.json")
    result = json.loads(selected.read_text())
    rows = _rows(pathlib.Path(result["predictions"]))
    assert len(rows) == result["examples"] == 300
    accuracy = result["metrics"]["accuracy"]
    assert accuracy == pytest.approx(100 * sum(r["correct"] for r in rows) / len(rows))
    assert accuracy == pytest.approx(
        100 * sum(r["parsed_prediction"] == r["target"] for r in rows) / len(rows)
    )
    assert result["selected_on"]["split"] == "validation"
    validation = (
        readme_tmp / f"dsbs_quickstart/eval/{selected.name.replace('_test_', '_validation_')}"
    )
    assert (
        json.loads(validation.read_text())["metrics"]["accuracy"] == result["selected_on"]["value"]
    )
    # Training's own final evaluation of its last step decoded the same way.
    final = readme_tmp / "dsbs_quickstart/model/eval" / "dsbs_synthetic_label_llm_test_1500.jsonl"
    if result["step"] == 1500:
        assert rows == _rows(final)


@pytest.mark.slow
def test_inference_answers_every_question(readme_tmp):
    answers = _rows(readme_tmp / "answers.jsonl")
    assert [a["id"] for a in answers] == ["q1", "q2"]
    assert all(a["label"] and a["rationale"] for a in answers)


@pytest.mark.slow
def test_the_jsonl_walkthrough_trains_and_evaluates_its_own_task(readme_tmp):
    run = json.loads((readme_tmp / "sums_model" / "run.json").read_text())
    assert (run["method"], run["dataset"], run["train_steps"]) == ("dsbs-gt", "sums", 10)
    result = json.loads(
        (readme_tmp / "sums_eval" / "dsbs_sums_label_gt_test_10.metrics.json").read_text()
    )
    rows = _rows(pathlib.Path(result["predictions"]))
    assert sorted((r["id"], r["target"]) for r in rows) == [("e1", "15"), ("e2", "13")]
    correct = sum(r["parsed_prediction"] == r["target"] for r in rows)
    assert result["metrics"]["accuracy"] == pytest.approx(100 * correct / len(rows))
    rationales = json.loads(
        (readme_tmp / "sums_eval" / "dsbs_sums_rationale_test_10.metrics.json").read_text()
    )
    rows = _rows(pathlib.Path(rationales["predictions"]))
    assert sorted(r["target"] for r in rows) == sorted(  # the test rows' own rationales
        json.loads(line)["working"]
        for line in (readme_tmp / "my_data/sums/test.jsonl").read_text().splitlines()
    )
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(r["target"], r["prediction"])["rougeL"].fmeasure for r in rows]
    assert rationales["metrics"]["rouge_l"] == pytest.approx(100 * sum(rouge) / len(rouge))


@pytest.mark.slow
def test_the_report_has_both_methods_and_its_plots(readme_tmp):
    """The table holds each run's final test accuracy, and the plots draw those runs."""
    with open(readme_tmp / "dsbs_report" / report.TABLE_CSV) as table:
        means = {row["method"]: float(row["mean"]) for row in csv.DictReader(table)}
    for method, run in (("dsbs-llm", "dsbs_quickstart/model"), ("standard-llm", "dsbs_standard")):
        (final,) = (readme_tmp / run / "eval").glob("*_label_llm_test_*.metrics.json")
        assert means[method] == pytest.approx(json.loads(final.read_text())["metrics"]["accuracy"])
    folders = [str(readme_tmp / "dsbs_quickstart/model"), str(readme_tmp / "dsbs_standard")]
    found = report.select(report.collect(folders, "test", "accuracy"))
    scores = [report.score(result, "accuracy") for result in found]
    figures = {
        report.FRACTION_PLOT: report.fraction_figure(report.group(scores), "accuracy", "test"),
        report.CURVES_PLOT: report.curves_figure(report.curve_runs(scores), "accuracy"),
    }
    (ax,) = figures[report.FRACTION_PLOT].axes
    drawn = {c.get_label(): c.lines[0].get_ydata()[0] for c in ax.containers}
    assert drawn == pytest.approx(means)
    for name, figure in figures.items():
        assert (readme_tmp / "dsbs_report" / name).read_bytes() == report.png(figure), name


# What each cluster command's gin must resolve: the run's required macros.
SH_REQUIRED = {"dsbs-train": "%TRAIN_STEPS", "dsbs-eval": "%CHECKPOINT_PATH"}
# README commands that print what they would run: launchers and sweeps.
LAUNCHER = re.compile(r"launch/\w+\.(sh|sbatch)")


def printed_commands(argv: list[str]) -> list[list[str]]:
    """The commands a launcher or sweep prints (`argv` asks for --dry-run), each an argv."""
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return [shlex.split(line) for line in run.stdout.splitlines() if not line.startswith("#")]


def binary_argv(command: str) -> list[str]:
    """The dsbs binary's argv a ```sh command runs: itself, the last command a launcher
    prints (for a TPU VM, the remote --command), or the first run a sweep prints."""
    argv = shlex.split(command)
    if argv[0] == "sbatch":  # sbatch's own options, then the script and its arguments
        argv = ["bash", *itertools.dropwhile(lambda a: a.startswith("--"), argv[1:])]
    if "launch/sweep.py" in argv[:2]:
        runs = printed_commands([sys.executable, *argv[1:], "--dry-run"])
        assert len({tuple(r) for r in runs}) == len(runs) > 1
        argv = runs[0]
    elif any(LAUNCHER.fullmatch(a) for a in argv[:2]):
        script = next(i for i, a in enumerate(argv) if LAUNCHER.fullmatch(a))
        argv = printed_commands(["bash", argv[script], "--dry-run", *argv[script + 1 :]])[-1]
        if argv[-1].startswith("--command="):
            argv = shlex.split(argv[-1].removeprefix("--command="))
    start = next(i for i, a in enumerate(argv) if pathlib.Path(a).name.startswith("dsbs-"))
    # The binary's own arguments: not a --log's `2>&1 | tee`, nor the host coordinates that
    # SLURM fills in per task (tests/test_launch.py checks those).
    own = itertools.takewhile(lambda a: a not in ("2>&1", "|"), argv[start + 1 :])
    coordinates = ("--coordinator_address=", "--num_processes=", "--process_id=")
    return [pathlib.Path(argv[start]).name, *[a for a in own if not a.startswith(coordinates)]]


@pytest.mark.parametrize("command", SH_COMMANDS)
def test_cluster_commands_parse(command):
    import gin
    from dsbs_jax import gin_utils
    from dsbs_jax.programs import annotate

    binary, *argv = binary_argv(command)
    if binary == "dsbs-annotate":  # plain flags
        args = annotate.parse_flags(argv)
        assert args.backend == "openai" and args.output_dir
        return
    parser = gin_utils.flag_parser(binary, "")
    parser.add_argument("--select_on")  # dsbs-eval's own flag
    args, bindings = gin_utils.parse_flags(parser, argv)
    gin.clear_config()
    gin_utils.parse(args.gin_file, bindings)
    assert gin.query_parameter(SH_REQUIRED[binary])
    assert args.select_on in (None, "validation")


# Appended to the README's own-dataset block: write a small release, build it, read a task.
OWN_DATASET = 'name="mydata"'
OWN_DATASET_CHECK = """
import json, pathlib, seqio, tensorflow_datasets as tfds
from dsbs_jax.data import builders
manual = pathlib.Path("{tmp}/manual/mydata")
(manual / "llm").mkdir(parents=True)
for split in ("train", "valid", "test"):
    rows = [dict(id=f"{{split}}{{i}}", text=f"is {{i}} even?", answer="yes" if i % 2 == 0 else "no")
            for i in range(6)]
    (manual / f"mydata_{{split}}.json").write_text("\\n".join(json.dumps(r) for r in rows))
    outputs = [f"{{i}} is {{'even' if i % 2 == 0 else 'odd'}}. So the answer is {{r['answer']}}."
               + "\\n\\nQ: x" for i, r in enumerate(rows)]
    (manual / "llm" / f"{{split}}_CoT_0.json").write_text(json.dumps(outputs))
builders.builder("mydata")(data_dir="{tmp}/dsbs_tfds").download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir="{tmp}/manual"))
task = seqio.get_mixture_or_task("dsbs_mydata_rationale")
example = next(task.source.get_dataset("test", shuffle=False).as_numpy_iterator())
assert example["teacher_rationale"].decode().endswith("."), example
assert example["teacher_parsed"], example
print("built", example["id"].decode())
"""


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_blocks_run(index, tmp_path):
    code = PYTHON_BLOCKS[index].replace("/tmp/", f"{tmp_path}/")
    if "logits =" in code:
        code += "\nassert logits.shape == (1, 4, 32128) and ids.shape == (1, 8)\n"
    if OWN_DATASET in code:
        code += OWN_DATASET_CHECK.format(tmp=tmp_path)
    # A module in a package, as users keep their task modules.
    package = tmp_path / "readme_block"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "block.py").write_text(code)
    run = subprocess.run(
        [sys.executable, "-c", "import readme_block.block"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    if OWN_DATASET in code:
        assert "built test" in run.stdout


def test_the_readme_has_commands_to_run():
    assert len(TOOL_COMMANDS) >= 3 and len(PYTHON_BLOCKS) >= 3 and SH_COMMANDS


def test_readme_lists_every_docs_page_and_each_page_says_what_it_is():
    assert sorted(DOCS) == sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
    for page in DOCS:
        text = (ROOT / page).read_text()
        assert text.startswith("# "), page
