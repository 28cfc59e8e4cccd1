"""dsbs-annotate against a local OpenAI-compatible server: every example once and in order
despite faults, resuming a killed run, self-consistency voting, the release layout the
builders read, the API key kept out of logs and files, early stop, bad input, TFDS input,
the seq2seq backend, and no TensorFlow or JAX on import."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from openai_server import FAULTS, MODEL, FakeOpenAI, synthetic_run_flags
from tiny import tiny_config

from dsbs_jax import checkpoints
from dsbs_jax.data import metrics, release, synthetic
from dsbs_jax.data.annotations import annotations_file, manifest_file, release_output
from dsbs_jax.models import T5
from dsbs_jax.programs import annotate
from dsbs_jax.teacher import annotating, prompts, voting
from dsbs_jax.teacher.seq2seq import Seq2SeqTeacher

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEY = "sk-test-annotate-0123456789"


@pytest.fixture(scope="module")
def problems() -> list[synthetic.Example]:
    """200 synthetic problems with the rule-based teacher's raw outputs (15% wrong, 60% run
    on into an invented next question)."""
    return synthetic.generate_splits(num_train=0, num_validation=0, num_test=200)["test"]


def responses(examples: list[synthetic.Example]) -> dict[str, str]:
    return {example.problem.question: example.teacher.text for example in examples}


def write_rows(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def synthetic_input(tmp_path: pathlib.Path, examples: list[synthetic.Example]) -> pathlib.Path:
    rows = [
        {"id": e.id, "question": e.problem.question, "answer": str(e.problem.answer)}
        for e in examples
    ]
    return write_rows(tmp_path / "input.jsonl", rows)


def flags(server: FakeOpenAI, input_path, output_dir, *extra: str) -> list[str]:
    return [
        *synthetic_run_flags(server, input_path, output_dir),
        "--timeout=0.5",
        "--backoff_base=0.01",
        *extra,
    ]


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def manifest(output_dir: pathlib.Path, split: str = "test") -> dict:
    return json.loads((output_dir / manifest_file(split)).read_text())


# ---------------------------------------------------------------------------------------------
# Must-show: faults, resume, self-consistency, the key
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_every_example_once_in_order_despite_faults(problems, tmp_path, endpoint):
    input_path, output_dir = synthetic_input(tmp_path, problems), tmp_path / "out"
    kinds = [kind for kind in FAULTS if kind != "echo_key"]
    faults = {e.problem.question: kinds[i % len(kinds)] for i, e in enumerate(problems[3::10])}
    with FakeOpenAI(responses(problems), faults=faults, fault_delay=1.5) as server:
        assert annotate.main(flags(server, input_path, output_dir, f"--endpoint={endpoint}")) == 0
    rows = read_jsonl(output_dir / annotations_file("test"))
    assert [row["id"] for row in rows] == [e.id for e in problems]
    assert [row["outputs"] for row in rows] == [[e.teacher.text] for e in problems]
    assert all(server.attempts[question] >= 2 for question in faults)
    retries = manifest(output_dir)["client"]["retries"]
    assert retries["429"] == retries["5xx"] == 4 and retries["malformed"] == 8
    assert retries["timeout"] >= 4

    # The release layout reads back as the rule-based teacher's own release does.
    examples = release.read_split(output_dir, "synthetic", "test")
    assert [(e.id, e.input, e.label, e.teacher_output) for e in examples] == [
        (p.id, p.problem.question, str(p.problem.answer), p.teacher.text) for p in problems
    ]
    summary = release.split_summary(examples, "synthetic")
    assert manifest(output_dir)["teacher_accuracy"] == {
        "correct": summary["teacher_correct"],
        "scored": 200,
        "accuracy": summary["teacher_accuracy"],
    }
    assert summary["teacher_accuracy"] == 0.85


def run_until_killed(argv: list[str], server: FakeOpenAI, requests: int) -> None:
    """Run dsbs-annotate in a subprocess and SIGKILL it once `server` has received `requests`
    requests."""
    command = [sys.executable, "-m", "dsbs_jax.annotate", *argv]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None:
            if len(server.received) >= requests:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it was killed"


def test_a_killed_run_loses_only_its_requests_in_flight_and_resumes_exactly(
    problems, tmp_path, capsys
):
    input_path = synthetic_input(tmp_path, problems)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    with FakeOpenAI(responses(problems), latency=0.03) as server:
        # No timeout on a loaded machine: each request is sent once, unless in flight at the kill.
        argv = flags(server, input_path, resumed, "--concurrency=2", "--timeout=30")
        annotations = resumed / annotations_file("test")
        run_until_killed(argv, server, requests=45)
        assert 40 <= annotations.read_bytes().count(b"\n") < 200
        with annotations.open("ab") as stream:  # as if the kill had cut a write in half
            stream.write(b'{"id": "synthetic-test-00199", "fingerprint": "')
        assert annotate.main(argv) == 0
        assert "dropped the partial last line" in capsys.readouterr().err
        # Every answer received was kept but those of the 2 requests in flight at the kill.
        assert 200 <= sum(server.attempts.values()) <= 200 + 2
        assert annotate.main(flags(server, input_path, whole, "--concurrency=2")) == 0
    for name in (
        "annotations_test.jsonl",
        "synthetic/synthetic_test.json",
        "synthetic/llm/test_CoT_0.json",
    ):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name

    assert annotate.main(argv) == 0  # nothing left: no request, no change
    assert "200 of 200 examples already annotated" in capsys.readouterr().err
    assert annotations.read_bytes() == (whole / annotations_file("test")).read_bytes()


# SVAMP-style samples: equations with values 6, 4, 4, 6, 4 (3 agree by value, not by text;
# the first sample is in the minority).
SAMPLES = ["(3 + 3)", "(8 / 2)", "(2 * 2)", "(10 - 4)", "(4)"]


def svamp_output(sample: int) -> str:
    return f"Step {sample}: work it out. The answer is {SAMPLES[sample]}."


@pytest.mark.parametrize("keep", ["vote", "gold"])
def test_self_consistency_votes_and_keeps_the_agreeing_rationales(tmp_path, keep):
    questions = [f"Problem {i:02d}: Ann has some apples.\nHow many now?" for i in range(10)]
    golds = ["(16 / 4)" if i % 2 else "(12 / 2)" for i in range(10)]  # values 4 or 6
    input_path = write_rows(
        tmp_path / "svamp.jsonl",
        [{"input": q, "label": g} for q, g in zip(questions, golds, strict=True)],
    )
    outputs = [svamp_output(sample) for sample in range(5)]
    argv = [
        f"--input=jsonl:{input_path}",
        "--split=test",
        "--prompt=svamp",
        "--dataset=svamp",
        "--samples=5",
        "--temperature=0.7",
        "--seed=0",
        f"--keep={keep}",
        f"--output_dir={tmp_path / 'out'}",
    ]
    with FakeOpenAI(dict.fromkeys(questions, outputs)) as server:
        server_flags = [f"--base_url={server.base_url}", f"--model={MODEL}"]
        assert annotate.main(argv + server_flags) == 0
    rows = read_jsonl(tmp_path / "out" / annotations_file("test"))
    assert [row["id"] for row in rows] == list(range(1, 11))  # line numbers: svamp has no ids
    for row, gold in zip(rows, golds, strict=True):
        assert row["outputs"] == outputs and row["labels"] == SAMPLES
        assert row["vote"] == "(8 / 2)"
        agrees_with_gold = metrics.equations_match(gold, "(8 / 2)")
        if keep == "vote" or agrees_with_gold:
            assert row["kept"] == [1, 2, 4]
        else:
            assert row["kept"] == [0, 3]
        assert row["label"] == (gold if keep == "gold" else "(8 / 2)")
        assert row["rationale"] == f"Step {row['kept'][0]}: work it out."
    assert manifest(tmp_path / "out")["teacher_accuracy"]["accuracy"] == 0.5
    llm = json.loads((tmp_path / "out" / "svamp" / "llm" / "test_CoT_0.json").read_text())
    assert llm == [outputs[row["kept"][0]] for row in rows]


def test_the_api_key_reaches_the_server_but_no_log_or_file(problems, tmp_path):
    examples = problems[:20]
    input_path, output_dir = synthetic_input(tmp_path, examples), tmp_path / "out"
    # One input answers 400 with the caller's Authorization header in its message.
    faults = {examples[1].problem.question: "echo_key", examples[2].problem.question: "429"}
    env = {**os.environ, "DSBS_TEST_KEY": KEY}
    with FakeOpenAI(responses(examples), faults=faults, api_key=KEY) as server:
        argv = flags(server, input_path, output_dir, "--api_key_env=DSBS_TEST_KEY")
        command = [sys.executable, "-m", "dsbs_jax.annotate", *argv]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 1  # the 400 left one example unannotated
    assert {r.headers["Authorization"] for r in server.received} == {f"Bearer {KEY}"}
    assert "bad request from Bearer ***" in result.stderr
    assert "1 of 20 examples not annotated" in result.stderr
    for text in (result.stdout, result.stderr):
        assert KEY not in text
    written = [path for path in output_dir.rglob("*") if path.is_file()]
    assert written and all(KEY not in path.read_text() for path in written)


# ---------------------------------------------------------------------------------------------
# Failures, resuming and bad input
# ---------------------------------------------------------------------------------------------


def test_a_refused_key_stops_early_with_a_clear_message(problems, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    input_path = synthetic_input(tmp_path, problems)
    with FakeOpenAI(responses(problems), api_key=KEY) as server:
        assert annotate.main(flags(server, input_path, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "stopped:" in err and "HTTP 401" in err and "$OPENAI_API_KEY, which is set" in err
    assert len(server.received) <= 8  # the first requests in flight, then nothing
    assert (tmp_path / "out" / annotations_file("test")).read_bytes() == b""


def test_failed_examples_are_not_written_and_a_rerun_retries_them(problems, tmp_path, capsys):
    examples = problems[:12]
    input_path, output_dir = synthetic_input(tmp_path, examples), tmp_path / "out"
    failing = {examples[4].problem.question: "500", examples[9].problem.question: "500"}
    with FakeOpenAI(responses(examples), faults=failing, fault_attempts=3) as server:
        assert annotate.main(flags(server, input_path, output_dir, "--max_retries=1")) == 1
        assert "2 of 12 examples not annotated" in capsys.readouterr().err
        ids = [row["id"] for row in read_jsonl(output_dir / annotations_file("test"))]
        assert ids == [e.id for i, e in enumerate(examples) if i not in (4, 9)]
        assert not (output_dir / "synthetic").exists()  # only once every example is done
        assert manifest(output_dir)["counts"]["unannotated"] == 2

        assert annotate.main(flags(server, input_path, output_dir)) == 0
    ids = [row["id"] for row in read_jsonl(output_dir / annotations_file("test"))]
    assert ids == [e.id for e in examples]  # rewritten in input order
    assert manifest(output_dir)["counts"]["annotated"] == 12


def test_rows_of_another_fingerprint_stay_but_do_not_count(problems, tmp_path, capsys):
    examples = problems[:8]
    input_path, output_dir = synthetic_input(tmp_path, examples), tmp_path / "out"
    with FakeOpenAI(responses(examples)) as server:
        assert annotate.main(flags(server, input_path, output_dir)) == 0
        assert annotate.main(flags(server, input_path, output_dir, "--max_tokens=64")) == 0
    assert "8 rows of annotations_test.jsonl have another fingerprint" in capsys.readouterr().err
    rows = read_jsonl(output_dir / annotations_file("test"))
    assert len(rows) == 16 and len({row["fingerprint"] for row in rows}) == 2
    assert manifest(output_dir)["counts"]["other_fingerprint_rows"] == 8
    assert manifest(output_dir)["teacher"]["max_tokens"] == 64


def test_bad_input_lines_are_named_and_skipped(problems, tmp_path, capsys):
    examples = problems[:6]
    lines = synthetic_input(tmp_path, examples).read_text().splitlines()
    lines[1] = '{"id": "broken", "question": "no closing'
    lines[3] = json.dumps({"id": "x", "text": "no question"})
    lines.insert(5, json.dumps({"id": examples[0].id, "question": "a duplicate", "answer": "1"}))
    input_path = tmp_path / "bad.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    with FakeOpenAI(responses(examples)) as server:
        assert annotate.main(flags(server, input_path, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"{input_path}:2: not valid JSON" in err
    assert f"{input_path}:4: no field 'question'" in err
    assert f"{input_path}:6: duplicate id '{examples[0].id}'" in err
    assert "skipped 3 bad lines" in err
    kept = [examples[i] for i in (0, 2, 4, 5)]
    rows = read_jsonl(tmp_path / "out" / annotations_file("test"))
    assert [row["id"] for row in rows] == [e.id for e in kept]
    written = release.read_split(tmp_path / "out", "synthetic", "test")
    assert [e.id for e in written] == [e.id for e in kept]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--prompt": "no_such_prompt"}, "--prompt: unknown prompt 'no_such_prompt'"),
        ({"--input": "jsonl:/no/such/file.jsonl"}, "--input jsonl:/no/such/file.jsonl: cannot"),
        ({"--input": "csv:rows.csv"}, "expected tfds:NAME or jsonl:PATH"),
        ({"--dataset": "no_such_dataset"}, "--dataset: unknown dataset 'no_such_dataset'"),
        ({"--dataset": "cqa"}, "writes 'synthetic' answers but --dataset is 'cqa'"),
        ({"--model": ""}, "--backend openai needs --base_url and --model"),
        ({"--input": "tfds:dsbs_no_such_dataset"}, "--dataset is for jsonl input"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, change, message):
    argv = {
        "--input": f"jsonl:{write_rows(tmp_path / 'in.jsonl', [])}",
        "--split": "test",
        "--prompt": "synthetic",
        "--dataset": "synthetic",
        "--base_url": "http://127.0.0.1:9/v1",
        "--model": MODEL,
        "--output_dir": str(tmp_path / "out"),
        **change,
    }
    assert annotate.main([f"{name}={value}" for name, value in argv.items()]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Voting and fingerprints
# ---------------------------------------------------------------------------------------------


def test_majority_clusters_by_the_rule_and_breaks_ties_by_first():
    exact = metrics.labels_match
    assert voting.majority(["b", None, "a", "a", "b "], exact) == "b"  # tie: b came first
    assert voting.majority([None, "a", "c", "a"], exact) == "a"
    assert voting.majority([None, None], exact) is None
    assert voting.majority(["(1 + 1)", "(3)", "(6 / 2)"], metrics.equations_match) == "(3)"


def test_keep_all_keeps_every_parsed_output():
    example = annotating.Example("q", "question", gold="3")
    outputs = ["x. So the answer is 3.", "unparsable", "y. So the answer is 4."]
    row = annotating.Vote("synthetic", "all").row(example, outputs, "f")
    assert row["labels"] == ["3", None, "4"] and row["kept"] == [0, 2]
    assert row["rationale"] == "x." and row["label"] == "3"


def test_changing_keep_recomputes_the_rows_without_asking_again(problems, tmp_path):
    examples = problems[:10]
    input_path, output_dir = synthetic_input(tmp_path, examples), tmp_path / "out"
    with FakeOpenAI(responses(examples)) as server:
        assert annotate.main(flags(server, input_path, output_dir)) == 0
        asked = len(server.received)
        assert annotate.main(flags(server, input_path, output_dir, "--keep=gold")) == 0
        assert len(server.received) == asked
    rows = read_jsonl(output_dir / annotations_file("test"))
    assert len(rows) == 10
    assert [row["label"] for row in rows] == [str(e.problem.answer) for e in examples]


def test_an_edited_input_file_is_annotated_again_where_it_changed(problems, tmp_path, capsys):
    """Ids are line numbers here: a row counts as done only for the same input."""
    examples = problems[:6]
    rows = [{"input": e.problem.question, "label": str(e.problem.answer)} for e in examples]
    input_path, output_dir = tmp_path / "plain.jsonl", tmp_path / "out"
    argv = [
        f"--input=jsonl:{input_path}",
        "--split=test",
        "--prompt=synthetic",
        "--label_field=label",
        f"--output_dir={output_dir}",
    ]
    with FakeOpenAI(responses(examples)) as server:
        argv += [f"--base_url={server.base_url}", f"--model={MODEL}"]
        write_rows(input_path, rows[:3])
        assert annotate.main(argv) == 0
        write_rows(input_path, [rows[5], *rows[1:3]])  # line 1 now holds another problem
        assert annotate.main(argv) == 0
    written = read_jsonl(output_dir / annotations_file("test"))
    assert [(r["id"], r["input"]) for r in written[:3]] == [
        (1, rows[5]["input"]),
        (2, rows[1]["input"]),
        (3, rows[2]["input"]),
    ]
    assert [r["input"] for r in written[3:]] == [rows[0]["input"]]  # kept, after ours
    assert "2 of 3 examples already annotated" in capsys.readouterr().err


def test_validation_of_a_dataset_without_a_validation_file_is_refused(tmp_path, capsys):
    argv = [
        "--input=jsonl:/dev/null",
        "--split=validation",
        "--prompt=svamp",
        "--dataset=svamp",
        "--base_url=http://127.0.0.1:9/v1",
        "--model=m",
        f"--output_dir={tmp_path}",
    ]
    assert annotate.main(argv) == 2
    assert "svamp has no validation file" in capsys.readouterr().err


def test_the_fingerprint_follows_teacher_prompt_and_settings():
    teacher = {"model": "m", "temperature": 0.0}
    base = annotating.fingerprint(teacher, "abc", 1)
    assert len(base) == 16 and base == annotating.fingerprint(
        dict(reversed(teacher.items())), "abc", 1
    )
    changed = [
        annotating.fingerprint({**teacher, "temperature": 0.5}, "abc", 1),
        annotating.fingerprint(teacher, "abd", 1),
        annotating.fingerprint(teacher, "abc", 5),
    ]
    assert base not in changed and len(set(changed)) == 3


# ---------------------------------------------------------------------------------------------
# TFDS input
# ---------------------------------------------------------------------------------------------


def test_tfds_input_in_order_with_gold_and_no_release_layout(tfds_data_dir, tmp_path):
    import tensorflow_datasets as tfds

    from dsbs_jax.data import builders  # noqa: F401

    dataset = tfds.load("dsbs_synthetic", split="validation", data_dir=str(tfds_data_dir))
    rows = list(tfds.as_numpy(dataset))[:30]
    answers = {row["input"].decode(): row["teacher_output"].decode() for row in rows}
    output_dir = tmp_path / "out"
    with FakeOpenAI(answers) as server:
        argv = [
            "--input=tfds:dsbs_synthetic",
            f"--data_dir={tfds_data_dir}",
            "--split=validation",
            "--limit=30",
            "--prompt=synthetic",
            f"--base_url={server.base_url}",
            f"--model={MODEL}",
            f"--output_dir={output_dir}",
        ]
        assert annotate.main(argv) == 0
        missing = argv[:1] + [f"--data_dir={tmp_path / 'empty'}"] + argv[2:]
        assert annotate.main(missing) == 2
    written = read_jsonl(output_dir / annotations_file("validation"))
    assert [r["id"] for r in written] == [row["id"].decode() for row in rows]
    assert [r["gold"] for r in written] == [row["label"].decode() for row in rows]
    assert [r["outputs"] for r in written] == [[row["teacher_output"].decode()] for row in rows]
    parsed = np.array([bool(row["teacher_parsed"]) for row in rows])
    assert manifest(output_dir, "validation")["counts"]["parse_failures"] == int((~parsed).sum())
    assert sorted(p.name for p in output_dir.iterdir()) == [
        annotations_file("validation"),
        manifest_file("validation"),
    ]


# ---------------------------------------------------------------------------------------------
# The in-process seq2seq teacher
# ---------------------------------------------------------------------------------------------


def test_the_seq2seq_backend_annotates_from_a_checkpoint(problems, small_vocabulary, tmp_path):
    config = tiny_config(vocab_size=2048)
    tokens = jnp.ones((1, 4), jnp.int32)
    params = meta.unbox(T5(config).init(jax.random.key(0), tokens, tokens)["params"])
    checkpoint = tmp_path / "teacher"
    checkpoints.save_orbax(checkpoint, config, jax.tree.map(np.asarray, params))
    examples = problems[:6]
    output_dir = tmp_path / "out"
    argv = [
        f"--input=jsonl:{synthetic_input(tmp_path, examples)}",
        "--split=test",
        "--prompt=synthetic",
        "--dataset=synthetic",
        "--backend=seq2seq",
        f"--checkpoint={checkpoint}",
        f"--vocabulary={small_vocabulary}",
        "--batch_size=4",
        "--max_input_length=64",
        "--max_tokens=8",
        f"--output_dir={output_dir}",
    ]
    assert annotate.main(argv) == 0
    rows = read_jsonl(output_dir / annotations_file("test"))
    assert [row["id"] for row in rows] == [e.id for e in examples]
    # The outputs are the teacher's own for these questions, in their order, unaltered.
    teacher = Seq2SeqTeacher(
        str(checkpoint),
        small_vocabulary,
        prompts.load_prompt("synthetic"),
        max_input_length=64,
        max_length=8,
        batch_size=4,
    )
    assert [row["outputs"] for row in rows] == teacher.generate(
        [e.problem.question for e in examples], 1
    )
    record = manifest(output_dir)
    assert record["teacher"]["backend"] == "seq2seq" and record["client"] is None
    llm = json.loads((output_dir / "synthetic" / "llm" / "test_CoT_0.json").read_text())
    assert llm == [release_output(row) for row in rows]


def test_import_needs_no_tensorflow_or_jax():
    code = "import sys, dsbs_jax.annotate; print({'jax', 'tensorflow'} & set(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "set()"


# ---------------------------------------------------------------------------------------------
# From annotations to a trained student
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_release_layout_builds_with_the_builder_and_trains_a_step(
    shared_dir, small_vocabulary, tmp_path
):
    """SVAMP's rows annotated by a teacher that states each problem's gold equation in
    SVAMP's answer format: `dsbs-prepare` builds the output with the SVAMP builder, every
    teacher label parses and is right, and dsbs-train takes a step on its tasks."""
    import gin
    import tasks
    from dsbs_jax.programs import prepare, train

    source = shared_dir / "datasets" / "svamp"
    rows = {split: read_jsonl(source / f"svamp_{split}.json") for split in ("train", "test")}
    answers = {  # SVAMP's teacher states a parenthesised equation: "(8.0)" for a bare 8.0
        row["input"]: "We work it out from the numbers given. The answer is "
        + (row["label"] if row["label"].startswith("(") else f"({row['label']})")
        + "."
        for split_rows in rows.values()
        for row in split_rows
    }
    output_dir = tmp_path / "annotated"
    with FakeOpenAI(answers) as server:
        for split in rows:
            argv = [
                f"--input=jsonl:{source / f'svamp_{split}.json'}",
                f"--split={split}",
                "--prompt=svamp",
                "--dataset=svamp",
                f"--base_url={server.base_url}",
                f"--model={MODEL}",
                f"--output_dir={output_dir}",
                "--concurrency=16",
            ]
            assert annotate.main(argv) == 0
    data_dir = tmp_path / "tfds"
    built = ["--dataset", "svamp", "--manual_dir", str(output_dir), "--data_dir", str(data_dir)]
    assert prepare.main(built) == 0
    examples = release.read_split(output_dir, "svamp", "test")
    assert len(examples) == len(rows["test"]) and all(e.teacher_parsed for e in examples)
    summary = release.split_summary(examples, "svamp")
    assert summary["teacher_correct"] == len(rows["test"]), summary

    tasks.register(data_dir=str(data_dir), vocabulary_path=small_vocabulary)
    gin.clear_config()
    model_dir = tmp_path / "model"
    assert (
        train.main(
            [
                "--gin_file=gin/runs/quickstart.gin",
                f"--gin.MODEL_DIR='{model_dir}'",
                f"--gin.DATA_DIR='{data_dir}'",
                f"--gin.VOCABULARY='{small_vocabulary}'",
                "--gin.T5Config.vocab_size=2200",
                "--gin.LABEL_TASK='dsbs_svamp_label_llm'",
                "--gin.RATIONALE_TASK='dsbs_svamp_rationale'",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'label': 32, 'rationale': 32}",
                "--gin.TRAIN_STEPS=1",
                "--gin.BATCH_SIZE=8",
                "--gin.Evaluation.examples=8",
                "--gin.train.final_eval_splits=['validation']",
                "--gin.train.allow_truncation=True",
            ]
        )
        == 0
    )
    assert (model_dir / "checkpoints" / "1").exists()
