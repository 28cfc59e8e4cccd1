"""Every installed binary, driven through a table of inputs a user gets wrong: each ends with
one line that names the file, key or flag and what was expected, and the exit status the
docs/concepts.md gives (2: change the command or its inputs; 1: the work itself failed). No
traceback reaches the user. Cases run side by side, as subprocesses of the installed
commands, so that the table costs about one command's start-up per core."""

import concurrent.futures
import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from runs import ROOT, TINY_MODEL, environment

SHARED = ROOT.parent / "shared"
FIXTURE = SHARED / "fixtures/t5x/test_t5_tiny.checkpoint_0"
QUICKSTART = ["--gin_file=gin/runs/quickstart.gin", "--gin.TRAIN_STEPS=2", *TINY_MODEL]


@dataclasses.dataclass(frozen=True)
class Case:
    binary: str
    args: list[str]  # `{tmp}` stands for the case's own folder
    status: int
    message: str  # a fragment of the one line the user reads
    setup: Callable[[Path], None] = lambda tmp: None


def _write(relative: str, data: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def _svamp_with(relative: str, data: bytes) -> Callable[[Path], None]:
    """The paper's SVAMP release, with one file replaced."""

    def setup(tmp: Path) -> None:
        shutil.copytree(SHARED / "datasets/svamp", tmp / "release/svamp")
        (tmp / "release/svamp" / relative).write_bytes(data)

    return setup


def _orbax_step_without_params(tmp: Path) -> None:
    (tmp / "ckpt/5/config").mkdir(parents=True)
    (tmp / "ckpt/5/config/metadata").write_text("{}")


EVAL = [
    "--gin_file=gin/runs/eval.gin",
    "--gin.TASK='dsbs_synthetic_label_llm'",
    "--gin.EVAL_OUTPUT_DIR='{tmp}/eval'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'label': 6}",
]
PREPARED = "--gin.DATA_DIR='{data}'"
METRICS = "run/eval/dsbs_synthetic_label_llm_test_100.metrics.json"
REPORT = ["{tmp}/run", "--output_dir", "{tmp}/report"]
INFER = ["--checkpoint", str(FIXTURE), "--output_file", "{tmp}/out.jsonl"]
ANNOTATE = [
    "--split", "train", "--prompt", "synthetic", "--backend", "openai", "--base_url",
    "http://127.0.0.1:9/v1", "--model", "m", "--output_dir", "{tmp}/out",
]  # fmt: skip
TOPK = [
    "--save_topk", "4", "--tasks", "dsbs_synthetic_label_llm", "--backend", "seq2seq",
    "--checkpoint", str(FIXTURE), "--split", "train",
]  # fmt: skip
SVAMP = ["--dataset", "svamp", "--manual_dir", "{tmp}/release", "--data_dir", "{tmp}/tfds"]


def _make_file(tmp: Path) -> None:
    (tmp / "file").write_text("not a folder")


CASES = {
    # dsbs-train
    "train/unprepared data dir": Case(
        "train",
        [*QUICKSTART, "--gin.DATA_DIR='{tmp}'", "--gin.MODEL_DIR='{tmp}/model'"],
        2,
        "dsbs-prepare --dataset synthetic",
    ),
    "train/missing gin file": Case("train", ["--gin_file={tmp}/absent.gin"], 2, "absent.gin"),
    "train/gin file that does not parse": Case(
        "train",
        ["--gin_file={tmp}/mine.gin"],
        2,
        "mine.gin, line 2: Unable to parse value",
        _write("mine.gin", "TRAIN_STEPS = 5\nMODEL_DIR = /tmp/run\n"),
    ),
    "train/unquoted string in a --gin flag": Case(
        "train",
        [*QUICKSTART, "--gin.MODEL_DIR={tmp}/model"],
        2,
        "Unable to parse value. A value is gin's (Python-like): quote a string",
    ),
    "train/initial checkpoint whose config.json is a JSON array": Case(
        "train",
        [
            *QUICKSTART,
            PREPARED,
            "--gin.MODEL_DIR='{tmp}/model'",
            "--gin.INITIAL_CHECKPOINT_PATH='{tmp}/hf'",
        ],
        2,
        "config.json: holds an array",
        _write("hf/config.json", "[]"),
    ),  # fmt: skip
    "train/model dir is a file": Case(
        "train", [*QUICKSTART, PREPARED, "--gin.MODEL_DIR='{tmp}/file'"], 2, "file", _make_file
    ),
    # dsbs-eval
    "eval/unprepared data dir": Case(
        "eval",
        [*EVAL, f"--gin.CHECKPOINT_PATH='{FIXTURE}'", "--gin.DATA_DIR='{tmp}'"],
        2,
        "dsbs-prepare --dataset synthetic",
    ),
    "eval/absent checkpoint": Case(
        "eval", [*EVAL, PREPARED, "--gin.CHECKPOINT_PATH='{tmp}/absent'"], 2, "absent"
    ),
    "eval/orbax step without its params": Case(  # a checkpoint fails; the others would run
        "eval",
        [*EVAL, PREPARED, "--gin.CHECKPOINT_PATH='{tmp}/ckpt'"],
        1,
        "an item is missing",
        _orbax_step_without_params,
    ),
    "eval/output dir is a file": Case(
        "eval",
        [
            *EVAL,
            PREPARED,
            f"--gin.CHECKPOINT_PATH='{FIXTURE}'",
            "--gin.EVAL_OUTPUT_DIR='{tmp}/file'",
        ],
        2,
        "file",
        _make_file,
    ),
    "eval/a result in the output dir that is not JSON": Case(
        "eval",
        [*EVAL, PREPARED, f"--gin.CHECKPOINT_PATH='{FIXTURE}'"],
        2,
        "dsbs_synthetic_label_llm_test_0.metrics.json: not a metrics file",
        _write("eval/dsbs_synthetic_label_llm_test_0.metrics.json", "{"),
    ),
    # dsbs-prepare
    "prepare/release file not UTF-8": Case(
        "prepare",
        SVAMP,
        2,
        "svamp_test.json, line 2: not UTF-8",
        _svamp_with("svamp_test.json", b'{"Body": "a"}\n{"Body": "\xff\xfe"}\n'),
    ),
    "prepare/teacher file not JSON": Case(
        "prepare",
        SVAMP,
        2,
        "train_CoT_0.json, line 1: not JSON",
        _svamp_with("llm/train_CoT_0.json", b"[{"),
    ),  # fmt: skip
    "prepare/unknown dataset": Case(
        "prepare", ["--dataset", "nope", "--data_dir", "{tmp}/tfds"], 2, "'nope': unknown"
    ),
    "prepare/absent manual dir": Case(
        "prepare", [*SVAMP[:2], "--manual_dir", "{tmp}/absent", *SVAMP[4:]], 2, "absent"
    ),
    # dsbs-convert
    "convert/config.json a JSON array": Case(
        "convert",
        ["{tmp}/hf", "{tmp}/out", "--to", "orbax"],
        2,
        "config.json: holds an array",
        _write("hf/config.json", "[]"),
    ),  # fmt: skip
    "convert/orbax step without its params": Case(
        "convert",
        ["{tmp}/ckpt", "{tmp}/out", "--to", "hf"],
        2,
        "an item is missing",
        _orbax_step_without_params,
    ),  # fmt: skip
    "convert/absent source": Case(
        "convert", ["{tmp}/absent", "{tmp}/out", "--to", "hf"], 2, "absent: no such file"
    ),
    "convert/destination inside a file": Case(
        "convert", [str(FIXTURE), "{tmp}/file/hf", "--to", "hf"], 2, "file", _make_file
    ),
    # dsbs-report
    "report/metrics file not JSON": Case(
        "report", REPORT, 2, f"{Path(METRICS).name}: not a metrics file", _write(METRICS, "{")
    ),
    "report/metrics file a JSON array": Case(
        "report", REPORT, 2, "holds an array", _write(METRICS, "[1]")
    ),
    "report/metrics file without its metrics": Case(
        "report",
        REPORT,
        2,
        "no metrics",
        _write(METRICS, '{"task": "t", "split": "test", "step": 1}'),
    ),
    "report/output dir is a file": Case(
        "report",
        ["{tmp}/run", "--output_dir", "{tmp}/file"],
        2,
        "file",
        lambda tmp: (_make_file(tmp), _write(METRICS, json.dumps(_METRICS))(tmp)),
    ),
    # dsbs-infer
    "infer/absent input": Case(
        "infer", [*INFER, "--input", "{tmp}/absent.jsonl"], 2, "absent.jsonl"
    ),
    "infer/absent vocabulary": Case(
        "infer",
        [*INFER, "--input", "{tmp}/in.jsonl", "--vocabulary", "{tmp}/absent.model"],
        2,
        "--vocabulary",
        _write("in.jsonl", '{"id": 1, "input": "a"}\n'),
    ),
    # dsbs-annotate
    "annotate/prompt file a JSON array": Case(
        "annotate",
        [
            "--input",
            "jsonl:{tmp}/rows.jsonl",
            *ANNOTATE[:2],
            "--prompt",
            "{tmp}/p.json",
            *ANNOTATE[4:],
        ],
        2,
        "p.json: holds [] (expected a JSON object)",
        lambda tmp: (
            _write("rows.jsonl", '{"input": "q", "label": "a"}\n')(tmp),
            _write("p.json", "[]")(tmp),
        ),
    ),
    "annotate/absent input": Case(
        "annotate", ["--input", "jsonl:{tmp}/absent.jsonl", *ANNOTATE], 2, "absent.jsonl"
    ),
    "annotate/output dir on Cloud Storage": Case(
        "annotate",
        [*TOPK, "--output_dir", "gs://bucket/teacher"],
        2,
        "argument --output_dir: gs://bucket/teacher: a local path is needed here, not a URL",
    ),  # fmt: skip
    "annotate/top-k of an unprepared dataset": Case(
        "annotate",
        [*TOPK, "--data_dir", "{tmp}", "--output_dir", "{tmp}/out"],
        2,
        "dsbs-prepare --dataset synthetic",
    ),  # fmt: skip
    # dsbs-fit
    "fit/unknown topology": Case(
        "fit", ["--topology", "v9-1", "--gin_file=gin/runs/quickstart.gin"], 2, "'v9-1'"
    ),
}
_METRICS = {
    "task": "dsbs_synthetic_label_llm",
    "split": "test",
    "step": 100,
    "metrics": {"accuracy": 50.0},
}


def _run(name: str, case: Case, root: Path, data_dir: Path) -> subprocess.CompletedProcess:
    tmp = root / name.replace("/", "_").replace(" ", "_")
    tmp.mkdir()
    case.setup(tmp)
    binary = Path(sys.executable).parent / f"dsbs-{case.binary}"
    args = [a.replace("{tmp}", str(tmp)).replace("{data}", str(data_dir)) for a in case.args]
    return subprocess.run(
        [str(binary), *args],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tfds_data_dir) -> dict[str, subprocess.CompletedProcess]:
    return run_all(tmp_path_factory.mktemp("hostile"), tfds_data_dir)


def run_all(root: Path, data_dir: Path) -> dict[str, subprocess.CompletedProcess]:
    """Every case, three at a time (each is mostly one process's start-up)."""
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {n: pool.submit(_run, n, case, root, data_dir) for n, case in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", CASES)
def test_a_hostile_input_ends_in_one_line_that_names_it(outcomes, name):
    case, done = CASES[name], outcomes[name]
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert done.returncode == case.status, done.stderr[-3000:]
    assert lines and lines[-1].startswith(f"dsbs-{case.binary}: "), done.stderr[-3000:]
    assert case.message in lines[-1], lines[-1]


if __name__ == "__main__":  # the table's outcomes, for a look: DATA_DIR as the argument
    import tempfile

    for name, done in run_all(Path(tempfile.mkdtemp()), Path(sys.argv[1])).items():
        tail = done.stderr.strip().splitlines()[-2:]
        print(f"== {name}: exit {done.returncode}\n   " + "\n   ".join(tail), flush=True)
