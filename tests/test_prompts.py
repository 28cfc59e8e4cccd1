"""The packaged few-shot prompts teach formats the parsers accept, with correct labels, and
broken prompt files are rejected naming the file and the key."""

import dataclasses
import json
import re

import pytest

from dsbs_jax.data import metrics, teacher_outputs
from dsbs_jax.teacher import prompts
from dsbs_jax.teacher.prompts import Exemplar, Prompt, PromptError, load_prompt

PACKAGED = ("cqa", "svamp", "esnli", "anli1", "synthetic")
# The answers of the SVAMP and synthetic exemplars, worked out by hand from their inputs.
ANSWERS = {"svamp": [9, 96, 9, 12, 20], "synthetic": [19, 18, 16, 8, 8]}
NUMBER = re.compile(r"\d+")


def parsed_labels(prompt) -> list[str]:
    return [teacher_outputs.parse(prompt.dataset, e.output).label for e in prompt.exemplars]


def test_every_dataset_has_a_packaged_prompt():
    assert set(prompts.packaged_names()) == set(PACKAGED)


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_exemplars_parse_and_continuations_are_cut(name):
    prompt = load_prompt(name)
    assert prompt.name == prompt.dataset == name
    assert 4 <= len(prompt.exemplars) <= 6
    for exemplar, label in zip(prompt.exemplars, parsed_labels(prompt), strict=True):
        assert label
        # A teacher that goes on to invent the next query is cut where that query starts.
        cut_at = teacher_outputs.answer_format(name).cut_at
        assert prompt.query("x" if not prompt.input_fields else "x</s>y").startswith(cut_at)
        invented = exemplar.output + prompt.separator + prompt.query(exemplar.input)
        assert teacher_outputs.parse(name, invented).label == label


def test_cqa_labels_are_the_choice_their_letter_names():
    prompt = load_prompt("cqa")
    for exemplar, label in zip(prompt.exemplars, parsed_labels(prompt), strict=True):
        _, heading, *lines = exemplar.input.split("\n")
        assert heading == "Answer Choices:" and len(lines) == 5
        choices = dict(re.fullmatch(r"\((.)\) (.+)", line).groups() for line in lines)
        letter = re.search(r"So the answer is \((.)\)", exemplar.output).group(1)
        assert choices[letter] == label


@pytest.mark.parametrize("name", ["svamp", "synthetic"])
def test_arithmetic_labels_give_the_right_answer_from_the_inputs_numbers(name):
    prompt = load_prompt(name)
    for exemplar, label, answer in zip(
        prompt.exemplars, parsed_labels(prompt), ANSWERS[name], strict=True
    ):
        assert metrics.equation_value(label) == answer
        if name == "svamp":  # an equation over the problem's own numbers
            assert set(NUMBER.findall(label)) <= set(NUMBER.findall(exemplar.input))


@pytest.mark.parametrize("name", ["esnli", "anli1"])
def test_nli_labels_are_classes_and_every_class_is_shown(name):
    prompt = load_prompt(name)
    assert sorted(set(parsed_labels(prompt))) == sorted(metrics.NLI_CLASSES)
    assert all("Premise" not in exemplar.output for exemplar in prompt.exemplars)


def test_text_and_messages_put_exemplars_in_order_then_the_query():
    prompt = load_prompt("esnli")
    query = prompt.query("A dog runs.</s>An animal moves.")
    assert query == (
        "Premise: A dog runs.\nHypothesis: An animal moves.\n"
        "Does the premise entail the hypothesis?\nA:"
    )
    shots = [prompt.query(e.input) + " " + e.output for e in prompt.exemplars]
    assert prompt.text("A dog runs.</s>An animal moves.") == "\n\n".join([*shots, query])

    messages = prompt.messages("A dog runs.</s>An animal moves.")
    assert messages[0] == {"role": "system", "content": prompt.instruction}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 6 + ["user"]
    assert [m["content"] for m in messages[2:-1:2]] == [e.output for e in prompt.exemplars]
    assert messages[1]["content"] == prompt.query(prompt.exemplars[0].input)
    assert messages[-1]["content"] == query


def test_text_keeps_only_the_first_exemplars_asked_for():
    prompt = load_prompt("synthetic")
    shots = [prompt.query(e.input) + " " + e.output for e in prompt.exemplars[:2]]
    assert prompt.text("x", exemplars=2) == "\n\n".join([*shots, prompt.query("x")])
    assert prompt.text("x", exemplars=0) == prompt.query("x")
    assert prompt.text("x", exemplars=None) == prompt.text("x")
    with pytest.raises(ValueError, match="exemplars must not be negative"):
        prompt.text("x", exemplars=-1)


def test_an_input_without_its_fields_is_an_error():
    with pytest.raises(PromptError, match=r"1 parts .* \(expected 2: premise, hypothesis\)"):
        load_prompt("anli1").query("no separator here")


def test_sha256_changes_when_any_field_changes():
    prompt = Prompt("p", "esnli", "Decide.", "Premise: {input}\nA:", exemplars=())
    changes = {
        "name": "q",
        "dataset": "anli1",
        "instruction": "Decide!",
        "template": "Premise: {input}\nA: ",
        "exemplars": (Exemplar("a</s>b", "Same.\nAnswer: entailment"),),
        "separator": "\n",
        "input_fields": ("premise", "hypothesis"),
        "input_separator": "<sep>",
        "answer_format": teacher_outputs.answer_format("esnli"),
    }
    assert set(changes) == {field.name for field in dataclasses.fields(prompt)}
    hashes = {prompt.sha256} | {
        dataclasses.replace(prompt, **{key: value}).sha256 for key, value in changes.items()
    }
    assert len(hashes) == 1 + len(changes)
    assert dataclasses.replace(prompt).sha256 == prompt.sha256


def packaged_json(name: str) -> dict:
    return json.loads((prompts.PROMPTS_DIR / f"{name}.json").read_text())


def write(tmp_path, data) -> str:
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_prompt_file_loads_like_the_packaged_one(tmp_path):
    assert load_prompt(write(tmp_path, packaged_json("cqa"))) == load_prompt("cqa")


@pytest.fixture
def formats(monkeypatch) -> dict:
    """The registry of answer formats, restored after the test."""
    registry = dict(teacher_outputs.ANSWER_FORMATS)
    monkeypatch.setattr(teacher_outputs, "ANSWER_FORMATS", registry)
    return registry


TALLY = {
    "name": "tally",
    "dataset": "tally",
    "instruction": "Add the numbers.",
    "template": "Sum: {input}\nWork:",
    "answer_format": {
        "cut_at": "Sum:",
        "marker": "Total",
        "label_pattern": r"=\s*(\d+)",
        "label_description": "'= number'",
        "drop_final_period": False,
    },
    "exemplars": [
        {"input": "2 3", "output": "2 plus 3 is 5. Total = 5"},
        {"input": "4 4 1", "output": "4 plus 4 is 8, plus 1 is 9. Total = 9"},
    ],
}


def test_a_new_dataset_brings_its_answer_format_in_the_prompt_file(tmp_path, formats):
    path = write(tmp_path, TALLY)
    prompt = load_prompt(path)
    expected = teacher_outputs.AnswerFormat("Sum:", "Total", r"=\s*(\d+)", "'= number'", False)
    assert prompt.answer_format == formats["tally"] == expected
    assert parsed_labels(prompt) == ["5", "9"]
    assert teacher_outputs.parse("tally", "1 plus 1 is 2. Total = 2\n\nSum: 5 5").label == "2"
    assert load_prompt(path) == prompt  # the same format registered again is fine
    assert prompt.sha256 != dataclasses.replace(prompt, answer_format=None).sha256


@pytest.mark.parametrize(
    ("answer_format", "message"),
    [
        (
            {"cut_at": "Q:", "marker": "The answer is"},
            r"answer_format: dataset 'cqa' already has another answer format "
            r"\(AnswerFormat\(cut_at='Q:', marker='So the answer is'",
        ),
        ({"cut_at": "Q:"}, r"missing key 'answer_format.marker' \(expected a string\)"),
        (
            {"cut_at": "Q:", "marker": "So", "drop_final_period": "yes"},
            r"'answer_format.drop_final_period' is \"yes\" \(expected true or false\)",
        ),
        ({"cut_at": "Q:", "marker": "So", "cut": "A:"}, r"unknown key 'answer_format.cut'"),
        ({"cut_at": "Q:", "marker": "So", "label_pattern": "("}, r"answer_format: bad label"),
        ("Q:", r"'answer_format' is \"Q:\" \(expected an object\)"),
    ],
)
def test_a_bad_or_conflicting_answer_format_is_refused(tmp_path, formats, answer_format, message):
    path = write(tmp_path, packaged_json("cqa") | {"answer_format": answer_format})
    with pytest.raises(PromptError, match=re.escape(path) + ": " + message):
        load_prompt(path)
    assert teacher_outputs.answer_format("cqa").marker == "So the answer is"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("template"), r"missing key 'template' \(expected a string\)"),
        (lambda d: d.update(separator=2), r"'separator' is 2 \(expected a string\)"),
        (lambda d: d.update(seperator="\n"), r"unknown key 'seperator'"),
        (
            lambda d: d.update(template="Q: {question}\nA:"),
            r"template: unknown field \{question\} \(expected \{input\}\)",
        ),
        (lambda d: d.update(template="Q: {input"), r"template: .*'\}'"),
        (
            lambda d: d["exemplars"][2].update(output="It is wooded. The answer is (c)."),
            r"exemplars\[2\]\.output does not parse as 'cqa' teacher output: "
            r"no 'So the answer is' marker",
        ),
        (lambda d: d["exemplars"][1].pop("output"), r"exemplars\[1\] is .* 'input' and 'output'"),
        (lambda d: d.update(dataset="nope"), r"dataset: no answer format for dataset 'nope'"),
        (
            lambda d: d.update(template="Question: {input}\nA:"),
            r"template: a teacher that goes on .* start with 'Q:'",
        ),
    ],
)
def test_bad_prompt_files_are_named_with_the_key(tmp_path, change, message):
    data = packaged_json("cqa")
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(PromptError, match=re.escape(path) + ": " + message):
        load_prompt(path)


def test_nli_exemplar_without_both_fields_names_it(tmp_path):
    data = packaged_json("esnli")
    data["exemplars"][3]["input"] = "only a premise"
    with pytest.raises(PromptError, match=r"exemplars\[3\]\.input: the input has 1 parts"):
        load_prompt(write(tmp_path, data))


def test_unknown_name_lists_the_packaged_prompts(tmp_path):
    with pytest.raises(PromptError, match="unknown prompt 'cqa2'.*anli1, cqa, esnli, svamp"):
        load_prompt("cqa2")
    with pytest.raises(PromptError, match="missing.json: cannot read it"):
        load_prompt(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PromptError, match="bad.json: not valid JSON"):
        load_prompt(str(tmp_path / "bad.json"))
