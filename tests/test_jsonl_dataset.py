"""A user's JSONL dataset: reading its rows with fields of their naming and each of the three
teacher sources, errors that name FILE:LINE, registering it from a task module, and the
whole way from JSONL files (annotated by `dsbs-annotate` or not) to a trained, evaluated
student."""

import json
import pathlib
import re

import numpy as np
import pytest
import runs
import tensorflow_datasets as tfds
from openai_server import MODEL, FakeOpenAI

import gin
from dsbs_jax.data import builders, datasets, release, teacher_outputs
from dsbs_jax.data.builders.jsonl import make_builder
from dsbs_jax.data.jsonl_dataset import JsonlLayout, read_dataset
from dsbs_jax.gin_utils import ConfigError
from dsbs_jax.programs import annotate, eval, prepare, train
from dsbs_jax.teacher import annotating
from tasks import registry
from tasks.jsonl import jsonl_dataset

NAME = "tickets"
TOPICS = {"billing": "invoice", "shipping": "parcel", "returns": "refund"}
QUEUES = tuple(TOPICS)
# The user's own field names: id, input, gold label, rationale.
TICKETS = JsonlLayout(NAME, "body", "queue", id_field="ticket", rationale_field="why")


@pytest.fixture(autouse=True)
def _restore(declaration_tables):
    """Each test's declarations are undone after it."""


def ticket_rows(count: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + count):
        queue = QUEUES[i % len(QUEUES)]
        rows.append(
            {
                "ticket": f"T-{i:03d}",
                "body": f"Ticket {i}: a question about my {TOPICS[queue]}",
                "queue": queue,
                "why": f"The customer writes about the {TOPICS[queue]}.",
            }
        )
    return rows


def write_rows(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_rows(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def teacher(example: release.Example) -> tuple[str, str, str, bool]:
    return (
        example.teacher_output,
        example.teacher_rationale,
        example.teacher_label,
        example.teacher_parsed,
    )


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def test_rows_with_rationales_of_their_own_and_a_held_out_validation_split(tmp_path):
    train = ticket_rows(12)
    train[1]["why"] = None  # not annotated: kept, unparsed
    del train[2]["why"]
    train[3]["why"] = ""
    write_rows(tmp_path / NAME / "train.jsonl", train)
    write_rows(tmp_path / NAME / "test.jsonl", ticket_rows(3, start=100))

    splits = read_dataset(tmp_path, TICKETS)

    assert list(splits) == ["train", "validation", "test"]
    kept, held_out = release.holdout_indices(len(train))
    assert [e.id for e in splits["train"]] == [train[i]["ticket"] for i in kept]
    assert [e.id for e in splits["validation"]] == [train[i]["ticket"] for i in held_out]
    examples = {e.id: e for split in ("train", "validation") for e in splits[split]}
    for row in train:
        example = examples[row["ticket"]]
        assert (example.input, example.label) == (row["body"], row["queue"])
        if row.get("why"):  # the teacher label is the gold one: `_llm` tasks equal `_gt`
            assert teacher(example) == ("", row["why"], row["queue"], True)
        else:
            assert teacher(example) == ("", "", "", False)
    assert [e.id for e in splits["test"]] == ["T-100", "T-101", "T-102"]


def test_a_teacher_label_field_and_rows_without_an_id_field(tmp_path):
    rows = [
        {"text": "refund please", "gold": "returns", "why": "A refund.", "guess": "billing"},
        {"text": "where is it", "gold": "shipping", "why": "A parcel.", "guess": None},
    ]
    write_rows(tmp_path / "help" / "validation.jsonl", rows)
    layout = JsonlLayout("help", "text", "gold", rationale_field="why", teacher_label_field="guess")

    (examples,) = read_dataset(tmp_path, layout).values()  # no train: nothing held out

    assert [e.id for e in examples] == ["1", "2"]  # line numbers, as dsbs-annotate's ids
    assert teacher(examples[0]) == ("", "A refund.", "billing", True)
    assert teacher(examples[1]) == ("", "", "", False)  # a rationale without its label


def test_raw_teacher_outputs_are_parsed_by_the_answer_format(tmp_path):
    teacher_outputs.register_answer_format(NAME, teacher_outputs.DEFAULT_ANSWER_FORMAT)
    rows = ticket_rows(3)
    rows[0]["cot"] = "An invoice. So the answer is billing.\n\nQ: and next?"
    rows[1]["cot"] = "I am not sure."
    write_rows(tmp_path / NAME / "test.jsonl", rows)
    layout = JsonlLayout(
        NAME, "body", "queue", id_field="ticket", rationale_field="why", teacher_output_field="cot"
    )

    first, second, third = read_dataset(tmp_path, layout)["test"]

    assert teacher(first) == (rows[0]["cot"], "An invoice.", "billing", True)
    assert teacher(second) == ("I am not sure.", "", "", False)  # unparsed, not a rationale
    assert teacher(third) == ("", rows[2]["why"], "returns", True)  # no raw output: (b)


def test_raw_teacher_outputs_need_a_registered_answer_format(tmp_path):
    write_rows(tmp_path / "help" / "test.jsonl", [{"q": "x", "a": "y", "cot": "z"}])
    layout = JsonlLayout("help", "q", "a", teacher_output_field="cot")
    with pytest.raises(release.ReleaseError, match="no answer format for dataset 'help'.*'cot'"):
        read_dataset(tmp_path, layout)


def annotation_row(row: dict, number: int, outputs: list[str], key: str = "run") -> dict:
    """The row dsbs-annotate writes for a JSONL row without an id field (its line number)."""
    example = annotating.Example(number, row["body"], row["queue"])
    return annotating.Vote(NAME).row(example, outputs, key)


def test_annotations_from_dsbs_annotate_join_by_id(tmp_path):
    teacher_outputs.register_answer_format(NAME, teacher_outputs.DEFAULT_ANSWER_FORMAT)
    rows = ticket_rows(5)
    write_rows(tmp_path / NAME / "validation.jsonl", rows)
    said = [f"About the {TOPICS[r['queue']]}. So the answer is {r['queue']}." for r in rows]
    latest = [
        annotation_row(rows[0], 1, [said[0], "So the answer is returns."]),
        annotation_row(rows[1], 2, ["No idea."]),  # no output parsed
        annotation_row(rows[3], 4, ["Maybe. So the answer is returns."]),  # a wrong label
        annotation_row(rows[4], 5, [said[4]]),
    ]
    older = [
        annotation_row(rows[0], 1, ["Older. So the answer is shipping."], key="other teacher"),
        annotation_row({**rows[3], "body": "an older text"}, 4, [said[3]]),
    ]
    write_rows(tmp_path / NAME / "annotations_validation.jsonl", latest + older)
    layout = JsonlLayout(NAME, "body", "queue")

    examples = read_dataset(tmp_path, layout)["validation"]

    assert [e.id for e in examples] == ["1", "2", "3", "4", "5"]
    assert teacher(examples[0]) == (said[0], "About the invoice.", "billing", True)
    assert teacher(examples[1]) == ("", "", "", False)
    assert teacher(examples[2]) == ("", "", "", False)  # never annotated
    assert teacher(examples[3]) == (latest[2]["outputs"][0], "Maybe.", "returns", True)
    assert teacher(examples[4]) == (said[4], "About the parcel.", "shipping", True)


def test_annotations_of_another_version_of_the_rows_are_an_error(tmp_path):
    teacher_outputs.register_answer_format(NAME, teacher_outputs.DEFAULT_ANSWER_FORMAT)
    rows = ticket_rows(3)
    annotations = [
        annotation_row(row, n, ["A. So the answer is x."]) for n, row in enumerate(rows, 1)
    ]
    rows[1]["queue"] = "returns"  # relabelled since
    rows_path = write_rows(tmp_path / NAME / "train.jsonl", rows)
    path = write_rows(tmp_path / NAME / "annotations_train.jsonl", annotations)
    with pytest.raises(release.ReleaseError) as error:
        read_dataset(tmp_path, JsonlLayout(NAME, "body", "queue"))
    message = str(error.value)
    assert f"{path}:2: id '2'" in message and str(rows_path) in message
    assert "gold label 'shipping'" in message and "another version" in message


def test_annotations_numbered_another_way_are_an_error(tmp_path):
    """Annotated by line number while the rows have an `id` (the dataset's default id)."""
    teacher_outputs.register_answer_format(NAME, teacher_outputs.DEFAULT_ANSWER_FORMAT)
    rows = [{"id": f"r{n}", **row} for n, row in enumerate(ticket_rows(3))]
    annotations = [
        annotation_row(row, n, ["A. So the answer is x."]) for n, row in enumerate(rows, 1)
    ]
    rows_path = write_rows(tmp_path / NAME / "train.jsonl", rows)
    path = write_rows(tmp_path / NAME / "annotations_train.jsonl", annotations)
    with pytest.raises(release.ReleaseError) as error:
        read_dataset(tmp_path, JsonlLayout(NAME, "body", "queue"))
    message = str(error.value)
    assert f"{path}: none of its ids (such as '1')" in message
    assert f"{rows_path} (such as 'r0')" in message


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"ticket": "T-9", "body": "hi", "queue": ', "not valid JSON"),
        ('{"ticket": "T-9", "body": "hi", "queue": 3}', "field 'queue' is a number"),
        ('{"ticket": "T-9", "queue": "billing"}', "no field 'body'"),
        ('{"ticket": "T-000", "body": "hi", "queue": "billing"}', "duplicate id 'T-000'"),
        ('{"ticket": "T-9", "body": "hi", "queue": "billing", "why": 7}', "'why' is a number"),
        ('["T-9", "hi", "billing"]', "an array (expected a JSON object)"),
    ],
)
def test_a_bad_line_stops_the_build_naming_file_and_line(tmp_path, line, expected):
    rows = [json.dumps(row) for row in ticket_rows(3)]
    path = tmp_path / NAME / "train.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join([*rows[:2], line, rows[2]]) + "\n")
    with pytest.raises(
        release.ReleaseError, match=f"^{re.escape(f'{path}:3: ')}.*{re.escape(expected)}"
    ):
        read_dataset(tmp_path, TICKETS)


def test_a_bad_annotation_line_names_file_and_line(tmp_path):
    write_rows(tmp_path / NAME / "test.jsonl", ticket_rows(2))
    path = write_rows(tmp_path / NAME / "annotations_test.jsonl", [{"id": 1, "input": "x"}])
    with pytest.raises(release.ReleaseError, match=f"^{re.escape(str(path))}:1: no 'fingerprint'"):
        read_dataset(tmp_path, JsonlLayout(NAME, "body", "queue"))


def test_missing_files(tmp_path):
    (tmp_path / NAME).mkdir()
    with pytest.raises(release.ReleaseError, match="no tickets split in .*: expected train.jsonl"):
        read_dataset(tmp_path, TICKETS)
    write_rows(tmp_path / NAME / "test.jsonl", ticket_rows(2))
    assert list(read_dataset(tmp_path, TICKETS)) == ["test"]


def test_a_layout_checks_its_name_and_fields():
    with pytest.raises(ValueError, match="lower-case letters"):
        JsonlLayout("My Tickets", "body", "queue")
    with pytest.raises(ValueError, match="needs a rationale_field"):
        JsonlLayout(NAME, "body", "queue", teacher_label_field="guess")


# ---------------------------------------------------------------------------------------------
# Registering
# ---------------------------------------------------------------------------------------------


def declare(**fields) -> object:
    return jsonl_dataset(NAME, "body", "queue", id_field="ticket", rationale_field="why", **fields)


def test_declaring_a_dataset_twice_is_harmless_and_other_fields_are_refused():
    first = declare()
    builder = builders.BUILDERS[NAME]
    assert declare() == first and builders.BUILDERS[NAME] is builder
    assert builder.name == "dsbs_tickets" and builder.layout == TICKETS
    assert make_builder(TICKETS) is builder
    assert datasets.get(NAME) == first
    assert first.tfds_name == "dsbs_tickets" and first.answer_phrase == "So the answer is"
    assert first.fields == ("body", "queue")
    with pytest.raises(ValueError, match="already declared as"):
        jsonl_dataset(NAME, "body", "queue")
    with pytest.raises(ValueError, match="'cqa' is built in"):
        jsonl_dataset("cqa", "question", "answer")


def test_answer_formats():
    with pytest.raises(ValueError, match="'cot' needs an answer_format"):
        declare(teacher_output_field="cot")
    fmt = teacher_outputs.AnswerFormat(cut_at="Ticket:", marker="Queue:")
    assert declare(answer_format=fmt).answer_phrase == "Queue:"
    with pytest.raises(ValueError, match="already has answer format"):
        declare(answer_format=teacher_outputs.DEFAULT_ANSWER_FORMAT)


def test_an_unimportable_task_module_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_tasks.py").write_text("from tasks.jsonl import jsonl_dataset\n1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"'no_such_tasks' cannot be .*on PYTHONPATH"):
        registry.register(modules=["no_such_tasks"])
    with pytest.raises(ConfigError, match="'broken_tasks' cannot be imported: ZeroDivisionError"):
        registry.import_modules(["broken_tasks"])


def test_binaries_exit_2_on_an_unimportable_task_module(tmp_path, capsys):
    modules = "--gin.TASK_MODULES=['no_such_tasks']"
    gin.clear_config()
    assert train.main(runs.flags(tmp_path / "model", tmp_path / "data", 1, modules)) == 2
    assert "configuration error: task module 'no_such_tasks'" in capsys.readouterr().err
    gin.clear_config()
    flags = [
        "--gin_file=gin/runs/eval.gin",
        f"--gin.CHECKPOINT_PATH='{tmp_path}'",
        f"--gin.TASK='dsbs_{NAME}_label_llm'",
        f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'label': 8}",
        modules,
    ]
    assert eval.main(flags) == 2
    assert "configuration error: task module 'no_such_tasks'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        prepare.main(["--dataset", NAME, "--data_dir", str(tmp_path), "--task_module", "x_y"])
    assert exited.value.code == 2 and "task module 'x_y'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        prepare.main(["--dataset", NAME, "--data_dir", str(tmp_path)])
    assert exited.value.code == 2 and f"--dataset '{NAME}': unknown" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def built_split(builder, split: str) -> dict[str, dict]:
    return {row["id"].decode(): row for row in tfds.as_numpy(builder.as_dataset(split=split))}


def test_rationales_annotated_by_dsbs_annotate_are_built(tmp_path):
    """dsbs-annotate on the user's own fields, then the builder joins its rows by id."""
    rows = [{k: v for k, v in row.items() if k != "why"} for row in ticket_rows(20)]
    input_path = write_rows(tmp_path / "tickets.jsonl", rows)
    prompt = {
        "name": "tickets",
        "dataset": NAME,
        "instruction": "Say which queue the ticket goes to.",
        "template": "Q: {input}\nA:",
        "answer_format": {"cut_at": "Q:", "marker": "So the answer is"},
        "exemplars": [
            {"input": "My card was charged twice", "output": "A charge. So the answer is billing."}
        ],
    }
    prompt_path = tmp_path / "prompt.json"
    prompt_path.write_text(json.dumps(prompt))
    answers = {
        row["body"]: f"It is about the {TOPICS[row['queue']]}. So the answer is {row['queue']}."
        for row in rows
    }
    answers[rows[4]["body"]] = "I cannot tell."
    manual_dir = tmp_path / "manual"
    with FakeOpenAI(answers) as server:
        argv = [
            f"--input=jsonl:{input_path}",
            "--split=train",
            f"--prompt={prompt_path}",
            f"--base_url={server.base_url}",
            f"--model={MODEL}",
            f"--output_dir={manual_dir / NAME}",
            "--input_field=body",
            "--label_field=queue",
            "--id_field=ticket",
        ]
        assert annotate.main(argv) == 0
    (manual_dir / NAME / "train.jsonl").write_bytes(input_path.read_bytes())
    jsonl_dataset(NAME, input_field="body", label_field="queue", id_field="ticket")

    builder = prepare.build(NAME, manual_dir, tmp_path / "data")

    annotations = {
        row["id"]: row for row in read_rows(manual_dir / NAME / "annotations_train.jsonl")
    }
    built = built_split(builder, "train") | built_split(builder, "validation")
    assert sorted(built) == sorted(annotations) == [row["ticket"] for row in rows]
    for row_id, row in built.items():
        assert row["teacher_rationale"].decode() == (annotations[row_id]["rationale"] or "")
        assert row["teacher_parsed"] == (annotations[row_id]["rationale"] is not None)
    assert not built[rows[4]["ticket"]]["teacher_parsed"]
    summary = prepare.summary_rows(builder, NAME)
    assert sum(split["parse_failures"] for split in summary) == 1
    assert sum(split["teacher_correct"] for split in summary) == 19


TASK_MODULE = """from tasks.jsonl import jsonl_dataset

TASKS = jsonl_dataset("tickets", input_field="body", label_field="queue", id_field="ticket")
"""


def annotate_with_an_automatic_prompt(manual_dir: pathlib.Path, rows: dict[str, list]) -> None:
    """`dsbs-annotate --prompt auto` on each split's rows (test: exemplars from train),
    against a teacher right about every ticket but one of train's."""
    answers = {
        row["body"]: f"It is about the {TOPICS[row['queue']]}. So the answer is {row['queue']}."
        for split_rows in rows.values()
        for row in split_rows
    }
    answers[rows["train"][0]["body"]] = "It is about something. So the answer is nowhere."
    folder = manual_dir / NAME
    with FakeOpenAI(answers) as server:
        for split in rows:
            argv = [
                f"--input=jsonl:{folder / f'{split}.jsonl'}",
                f"--split={split}",
                "--prompt=auto",
                f"--exemplars_from=jsonl:{folder / 'train.jsonl'}",
                "--exemplars=3",
                f"--base_url={server.base_url}",
                f"--model={MODEL}",
                f"--output_dir={folder}",
                "--input_field=body",
                "--label_field=queue",
                "--id_field=ticket",
            ]
            assert annotate.main(argv) == 0
    prompt = json.loads((folder / annotate.AUTO_PROMPT_FILE).read_text())
    assert len(prompt["exemplars"]) == 3
    assert rows["train"][0]["body"] not in {e["input"] for e in prompt["exemplars"]}


@pytest.mark.slow
def test_a_task_module_prepares_trains_and_evaluates(tmp_path, small_vocabulary):
    """The user's way with a task the project does not know and no prompt written by hand:
    rows annotated with `dsbs-annotate --prompt auto`, a module of a few lines, then
    dsbs-prepare, dsbs-train (one step of distilling step-by-step) and dsbs-eval on the test
    split, each naming the module."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "ticket_tasks.py").write_text(TASK_MODULE)
    manual_dir, data_dir = tmp_path / "manual", tmp_path / "data"
    rows = {"train": ticket_rows(40), "test": ticket_rows(12, start=100)}
    for split, split_rows in rows.items():
        without_rationales = [{k: v for k, v in row.items() if k != "why"} for row in split_rows]
        write_rows(manual_dir / NAME / f"{split}.jsonl", without_rationales)
    annotate_with_an_automatic_prompt(manual_dir, rows)
    test_rows = rows["test"]
    on_path = {"python_path": [modules]}

    prepared = runs.run(
        [
            "--task_module=ticket_tasks",
            f"--dataset={NAME}",
            f"--manual_dir={manual_dir}",
            f"--data_dir={data_dir}",
        ],
        binary="prepare",
        **on_path,
    )
    table = [line.split()[:3] for line in prepared.stdout.splitlines() if line.startswith(NAME)]
    assert table == [
        [NAME, "train", "36"],
        [NAME, "validation", "4"],
        [NAME, "test", "12"],
    ]

    lengths = "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'label': 8, 'rationale': 32}"
    shared = [
        f"--gin.VOCABULARY='{small_vocabulary}'",
        "--gin.TASK_MODULES=['ticket_tasks']",
        lengths,
    ]
    model_dir = tmp_path / "model"
    runs.run(
        runs.flags(
            model_dir,
            data_dir,
            1,
            "--gin.MODE='dsbs'",
            f"--gin.LABEL_TASK='dsbs_{NAME}_label_llm'",
            f"--gin.RATIONALE_TASK='dsbs_{NAME}_rationale'",
            "--gin.T5Config.vocab_size=2200",
            *shared,
        ),
        **on_path,
    )

    out, task = tmp_path / "eval", f"dsbs_{NAME}_label_llm"
    eval_flags = [
        "--gin_file=gin/runs/eval.gin",
        f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoints' / '1'}'",
        f"--gin.TASK='{task}'",
        "--gin.SPLIT='test'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'",
        f"--gin.DATA_DIR='{data_dir}'",
        "--gin.BATCH_SIZE=8",
        *shared,
    ]
    runs.run(eval_flags, binary="eval", **on_path)
    result = json.loads((out / f"{task}_test_1.metrics.json").read_text())
    predictions = read_rows(out / f"{task}_test_1.jsonl")
    assert result["examples"] == len(predictions) == len(test_rows)
    gold = {row["ticket"]: row["queue"] for row in test_rows}
    assert {row["id"]: row["target"] for row in predictions} == gold
    share = 100 * np.mean(
        [row["parsed_prediction"].strip() == row["target"] for row in predictions]
    )
    assert result["metrics"]["accuracy"] == pytest.approx(share)
