"""Teacher-output parsing: literal cases per dataset, and every released output against an
independent re-implementation of the reference's string operations."""

import collections
import json
import re

import pytest

from dsbs_jax.data import datasets, teacher_outputs
from dsbs_jax.data.teacher_outputs import AnswerFormat, TeacherOutput, parse

CQA_OUTPUT = (
    "The answer must be something that has to do with the above problem. Of the above "
    "choices, only math problem has to do with the above problem. So the answer is (d) math "
    'problem.\n\nQ: "The man was so hungry he could eat a horse."  What is this an example '
    "of?\nAnswer Choices:\n(a) horse\n(b) hunger\nA: The answer must be something. So the"
)


def test_cqa_keeps_the_choice_text_and_cuts_the_invented_question():
    assert parse("cqa", CQA_OUTPUT) == TeacherOutput(
        raw=CQA_OUTPUT,
        rationale="The answer must be something that has to do with the above problem. Of the "
        "above choices, only math problem has to do with the above problem.",
        label="math problem",
        parsed=True,
        problem="",
    )


@pytest.mark.parametrize(
    "raw, label",
    [
        ("R. So the answer is (b) car lot (c) car.", "car lot"),  # up to the next letter
        ("R. So the answer is (e) Washington D.C.", "Washington D.C"),  # one final "." only
        ("R. So the answer is (a) zoo", "zoo"),
        ("R. So the answer is (a) zoo. Q: Where? A: So the answer is (b) x.", "zoo"),
    ],
)
def test_cqa_labels(raw, label):
    assert parse("cqa", raw).label == label


@pytest.mark.parametrize(
    "dataset, raw, problem",
    [
        (
            "cqa",
            "R. So the answer is one of these four.\n\nQ: x",
            "no '(x)' choice letter after 'So the answer is'",
        ),
        (
            "cqa",
            "R without a marker.\n\nQ: x? A: y. So the answer is (a) y.",
            "no 'So the answer is' marker",
        ),
        ("cqa", "So the answer is (a) x. So the answer is (b) y.", "2 'So the answer is' markers"),
        ("cqa", "R. So the answer is (a) .", "empty label after 'So the answer is'"),
        (
            "svamp",
            "So 491 - 216 = 275. The answer is ((491 - 21",
            "no parenthesised equation after 'The answer is'",
        ),
        ("esnli", "The men are standing by a docked boat.\n", "no 'Answer:' marker"),
        (
            "anli1",
            "It is the tenth month, so the answer is entailment.\n\nPremise: x",
            "no 'So the answer is' marker",
        ),
    ],
)
def test_unparsable_outputs_are_flagged_with_a_reason_and_no_label(dataset, raw, problem):
    assert parse(dataset, raw) == TeacherOutput(raw, "", "", parsed=False, problem=problem)


@pytest.mark.parametrize(
    "dataset, raw, rationale, label",
    [
        (
            "svamp",
            "84 / 2 = 42. The answer is (84 / 2).\n\nQ: 1/3 of 120? A: The answer is (120 /",
            "84 / 2 = 42.",
            "(84 / 2)",
        ),
        ("svamp", "The answer is ((3 + 4) * 2) apples.", "", "((3 + 4) * 2)"),
        (
            "esnli",
            "The packages may not be from lunch.\nAnswer: neutral\n\nPremise: Two women.",
            "The packages may not be from lunch.",
            "neutral",
        ),
        (
            "anli1",
            "Being a senator implies a political career. So the answer is entailment."
            "\n\nPremise: Almost Sunrise",
            "Being a senator implies a political career.",
            "entailment",
        ),
        (
            "synthetic",
            "23 + 4 = 27. So the answer is 27.\n\nQ: The farm stand has 5 melons.",
            "23 + 4 = 27.",
            "27",
        ),
    ],
)
def test_each_dataset_rule(dataset, raw, rationale, label):
    assert parse(dataset, raw) == TeacherOutput(raw, rationale, label, parsed=True)


def test_answer_phrases():
    phrases = {name: datasets.get(name).answer_phrase for name in ("cqa", "svamp", "esnli")}
    assert phrases == {"cqa": "So the answer is", "svamp": "The answer is", "esnli": "Answer:"}


def test_a_users_format_can_be_registered_but_not_replaced(monkeypatch):
    monkeypatch.setattr(teacher_outputs, "ANSWER_FORMATS", dict(teacher_outputs.ANSWER_FORMATS))
    fmt = AnswerFormat(cut_at="Question:", marker="Therefore:", drop_final_period=False)
    teacher_outputs.register_answer_format("mine", fmt)
    teacher_outputs.register_answer_format("mine", fmt)  # the same again is harmless
    assert parse("mine", "Because. Therefore: yes.\nQuestion: no").label == "yes."
    assert teacher_outputs.answer_format("mine").marker == "Therefore:"
    with pytest.raises(ValueError, match="'cqa' already has"):
        teacher_outputs.register_answer_format("cqa", fmt)
    with pytest.raises(ValueError, match="no answer format for dataset 'other'"):
        parse("other", "x")


def test_a_bad_format_is_refused_when_made():
    with pytest.raises(ValueError, match="bad label_pattern"):
        AnswerFormat(cut_at="Q:", marker="A:", label_pattern="(unclosed")
    with pytest.raises(ValueError, match="non-empty"):
        AnswerFormat(cut_at="", marker="A:")


# The reference's parsers (google-research/distilling-step-by-step, data_utils.py), as
# string operations; None where the reference writes its placeholder label (' ' or '').
def reference_cqa(output: str) -> str | None:
    rationale, label = output.split("Q:")[0].rstrip().split("So the answer is")
    pieces = re.split(r"\(.\)", label)
    if len(pieces) < 2 or not pieces[1].strip():
        return None
    label = pieces[1].strip()
    return label[:-1] if label[-1] == "." else label


def reference_svamp(output: str) -> str | None:
    pieces = output.split("Q:")[0].rstrip().split("The answer is")
    match = re.search(r"\(.*\)", pieces[1]) if len(pieces) == 2 else None
    return match.group(0) if match else None


def reference_esnli(output: str) -> str | None:
    pieces = output.split("Answer: ")
    return pieces[1].split("Premise")[0].rstrip() if len(pieces) > 1 else None


def reference_anli(output: str) -> str | None:
    pieces = output.split("Premise:")[0].rstrip().split("So the answer is")
    return pieces[1].lstrip()[:-1] if len(pieces) == 2 else None


REFERENCE = {"cqa": reference_cqa, "svamp": reference_svamp, "esnli": reference_esnli}
REFERENCE["anli1"] = reference_anli
# Parse failures per release split and reason, as observed in the released outputs.
EXPECTED_PROBLEMS = {
    ("cqa", "train"): {"no '(x)' choice letter after 'So the answer is'": 3},
    ("cqa", "test"): {},
    ("svamp", "train"): {
        "no 'The answer is' marker": 11,
        "no parenthesised equation after 'The answer is'": 2,
    },
    ("svamp", "test"): {"no 'The answer is' marker": 2},
    ("esnli", "valid"): {"no 'Answer:' marker": 1},
    ("esnli", "test"): {},
    ("anli1", "valid"): {"no 'So the answer is' marker": 1},
    ("anli1", "test"): {},
}


def released_outputs(datasets_dir, dataset: str, split: str) -> list[str]:
    chunks = sorted((datasets_dir / dataset / "llm").glob(f"{split}_CoT_*.json"))
    chunks.sort(key=lambda path: int(path.stem.rsplit("_", 1)[1]))
    return [output for chunk in chunks for output in json.loads(chunk.read_text())]


@pytest.mark.parametrize("dataset, split", list(EXPECTED_PROBLEMS))
def test_released_outputs_parse_as_the_reference_parses_them(shared_dir, dataset, split):
    outputs = released_outputs(shared_dir / "datasets", dataset, split)
    assert outputs, f"no {dataset} {split} teacher outputs found"
    parsed = [parse(dataset, output) for output in outputs]
    problems = collections.Counter(p.problem for p in parsed if not p.parsed)
    assert problems == EXPECTED_PROBLEMS[dataset, split]
    ours = [p.label if p.parsed else None for p in parsed]
    assert ours == [REFERENCE[dataset](output) for output in outputs]


@pytest.mark.parametrize("dataset", ["esnli", "anli1"])
def test_parsed_nli_labels_are_classes(shared_dir, dataset):
    for split in ("valid", "test"):
        for output in released_outputs(shared_dir / "datasets", dataset, split):
            parsed = parse(dataset, output)
            assert not parsed.parsed or parsed.label in ("entailment", "neutral", "contradiction")
