"""`--prompt auto`: diverse questions by clustering, zero-shot answers kept only when right
(by gold, or by a strict majority of samples), the built prompt saved, reused and refused
when its settings change, against a local OpenAI-compatible server."""

import dataclasses
import json

import pytest
from openai_server import MODEL, FakeOpenAI

from dsbs_jax.data import synthetic, teacher_outputs
from dsbs_jax.programs import annotate
from dsbs_jax.teacher import auto_prompt, prompts

# Three kinds of question, told apart by their words only.
KINDS = {
    "fruit": "How many {n} apples and pears are in the fruit basket?",
    "train": "When does train {n} leave the station platform?",
    "paint": "Which colour of paint {n} covers the wooden fence?",
}


def kind_rows(per_kind: int) -> list[tuple[str, str]]:
    """(question, kind) pairs, the kinds interleaved."""
    return [
        (template.format(n=f"n{i}"), kind)
        for i in range(per_kind)
        for kind, template in KINDS.items()
    ]


def test_clusters_follow_the_kinds_of_question_nearest_the_centre_first():
    rows = kind_rows(5)
    groups = auto_prompt.diverse_clusters([q for q, _ in rows], k=3, seed=0)
    assert sorted(len(g) for g in groups) == [5, 5, 5]
    assert [{rows[i][1] for i in g} for g in groups] == [{"fruit"}, {"train"}, {"paint"}]
    assert auto_prompt.diverse_clusters([q for q, _ in rows], k=3, seed=0) == groups
    # More clusters than distinct texts: one per text.
    assert len(auto_prompt.diverse_clusters(["same text", "same text", "other"], 5, 0)) == 2


def answer(kind: str, right: bool) -> str:
    label = kind if right else "wrong"
    return f"It asks about the {kind}. So the answer is {label}."


class Teacher:
    """A teacher asked zero-shot: `answers[question]` is its outputs, sample by sample."""

    def __init__(self, answers: dict[str, list[str | None]]):
        self.answers, self.asked = answers, []

    def __call__(self, inputs, samples):
        self.asked.extend(inputs)
        return [[self.answers[q][j % len(self.answers[q])] for j in range(samples)] for q in inputs]


def new_task_base(name: str = "kinds") -> prompts.Prompt:
    return auto_prompt.skeleton(name)


def test_with_gold_only_right_answers_become_exemplars_and_candidates_bound_the_search():
    rows = kind_rows(4)
    groups = auto_prompt.diverse_clusters([q for q, _ in rows], 3, 0)
    by_kind = {rows[g[0]][1]: g for g in groups}
    answers = {q: [answer(kind, True)] for q, kind in rows}
    # fruit: its first two candidates are wrong or unparsed; train: every answer is wrong.
    answers[rows[by_kind["fruit"][0]][0]] = [answer("fruit", False)]
    answers[rows[by_kind["fruit"][1]][0]] = ["It is fruit."]
    for i in by_kind["train"]:
        answers[rows[i][0]] = [answer("train", False)]
    teacher = Teacher(answers)
    search = auto_prompt.Search(exemplars=3, candidates=3, seed=0)
    table = [auto_prompt.Row(q, kind) for q, kind in rows]

    prompt, report = auto_prompt.build(new_task_base(), table, teacher, search)

    assert [e.input for e in prompt.exemplars] == [
        rows[by_kind["fruit"][2]][0],
        rows[by_kind["paint"][0]][0],
    ]
    for exemplar in prompt.exemplars:
        parsed = teacher_outputs.parse("kinds", exemplar.output)
        assert parsed.label == dict(rows)[exemplar.input]
    assert [c["tried"] for c in report["clusters"]] == [3, 3, 1]  # fruit, train, paint
    assert [c["exemplar"] for c in report["clusters"]] == [True, False, True]
    assert report["requests"] == len(teacher.asked) == 7
    assert prompt.answer_format == teacher_outputs.DEFAULT_ANSWER_FORMAT


def test_without_gold_a_strict_majority_of_samples_decides():
    rows = kind_rows(2)
    answers = {q: [answer(kind, True)] * 3 for q, kind in rows}
    split = [q for q, kind in rows if kind == "train"]
    answers[split[0]] = [answer("train", True), answer("train", False), "unparsed"]
    answers[split[1]] = [answer("train", False), answer("train", True), answer("train", True)]
    teacher = Teacher(answers)
    table = [auto_prompt.Row(q, None) for q, _ in rows]
    search = auto_prompt.Search(exemplars=3, candidates=2, samples=3)

    prompt, report = auto_prompt.build(new_task_base(), table, teacher, search)

    train = [e for e in prompt.exemplars if e.input in split]
    # 1 of 3 agree on the first question: no majority; the second's majority is "train",
    # and the exemplar is its first sample that says so (not the first sample).
    assert [e.input for e in train] == [split[1]]
    assert teacher_outputs.parse("kinds", train[0].output).label == "train"
    assert report["requests"] == 3 * len(teacher.asked)


def test_no_right_answer_is_a_clear_error():
    rows = kind_rows(1)
    teacher = Teacher({q: ["no marker here"] for q, _ in rows})
    table = [auto_prompt.Row(q, kind) for q, kind in rows]
    with pytest.raises(auto_prompt.AutoPromptError, match="none of the teacher's zero-shot"):
        auto_prompt.build(new_task_base(), table, teacher, auto_prompt.Search(exemplars=3))


def test_a_packaged_dataset_keeps_its_layout_and_a_prompt_file_round_trips(tmp_path):
    base = auto_prompt.skeleton("cqa")
    packaged = prompts.load_prompt("cqa")
    assert (base.template, base.instruction, base.exemplars) == (
        packaged.template,
        packaged.instruction,
        (),
    )
    zero = auto_prompt.zero_shot(base).text("What is it?\nAnswer Choices:\n(a) x\n(b) y")
    assert zero.startswith(packaged.instruction) and zero.endswith(auto_prompt.TRIGGER)

    built = dataclasses.replace(
        auto_prompt.skeleton("kinds"),
        exemplars=(prompts.Exemplar("Q one", "Because. So the answer is x."),),
    )
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps({**built.to_json(), "provenance": {"any": "thing"}}))
    assert prompts.load_prompt(str(path)).sha256 == built.sha256


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problems() -> list[synthetic.Example]:
    """60 synthetic problems and the rule-based teacher's outputs (some wrong)."""
    return synthetic.generate_splits(num_train=0, num_validation=0, num_test=60)["test"]


def write_task(folder, examples) -> str:
    """The problems as a new task's train.jsonl (fields `question`, `answer`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    rows = [
        {"id": e.id, "question": e.problem.question, "answer": str(e.problem.answer)}
        for e in examples
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def auto_flags(server, input_path, output_dir, *extra) -> list[str]:
    return [
        f"--input=jsonl:{input_path}",
        "--split=train",
        "--prompt=auto",
        "--input_field=question",
        "--label_field=answer",
        f"--base_url={server.base_url}",
        f"--model={MODEL}",
        f"--output_dir={output_dir}",
        "--exemplars=4",
        *extra,
    ]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_new_task_is_annotated_with_a_built_prompt_that_is_then_reused(
    problems, tmp_path, capsys, endpoint
):
    input_path = write_task(tmp_path / "sums", problems)
    responses = {e.problem.question: e.teacher.text for e in problems}
    right = {e.problem.question for e in problems if e.teacher.answer == e.problem.answer}
    output_dir = tmp_path / "out"
    with FakeOpenAI(responses) as server:
        flags = auto_flags(server, input_path, output_dir, f"--endpoint={endpoint}")
        assert annotate.main(flags) == 0
        saved = json.loads((output_dir / annotate.AUTO_PROMPT_FILE).read_text())
        prompt = prompts.load_prompt(str(output_dir / annotate.AUTO_PROMPT_FILE))
        assert prompt.dataset == "sums" and len(prompt.exemplars) == 4
        assert all(e.input in right for e in prompt.exemplars)  # the wrong ones were refused
        assert saved["provenance"]["settings"]["search"]["exemplars"] == 4
        assert saved["provenance"]["report"]["requests"] >= 4
        # After the build, every request is the few-shot prompt with those exemplars.
        built_requests = server.received[saved["provenance"]["report"]["requests"] :]
        assert len(built_requests) == len(problems)
        if endpoint == "chat":  # the exemplars as turns, then the question
            assert all(r.body["messages"][:-1] == prompt.messages("x")[:-1] for r in built_requests)
        else:
            assert all(r.body["prompt"].startswith(prompt.text("x")[:-4]) for r in built_requests)
        rows = [json.loads(line) for line in (output_dir / "annotations_train.jsonl").open()]
        assert len(rows) == len(problems)
        manifest = json.loads((output_dir / "manifest_train.json").read_text())
        assert manifest["prompt"]["sha256"] == prompt.sha256

        asked = len(server.received)
        assert annotate.main(flags) == 0
        assert len(server.received) == asked  # same prompt, same fingerprint: nothing asked
        assert "reusing the prompt built earlier" in capsys.readouterr().err

        assert annotate.main([*flags, "--candidates=2"]) == 2
        message = capsys.readouterr().err
        assert "was built with search" in message and "--prompt " in message
        assert len(server.received) == asked


def test_auto_usage_errors_exit_2(problems, tmp_path, capsys):
    input_path = write_task(tmp_path / "sums", problems[:5])
    with FakeOpenAI({}) as server:
        flags = auto_flags(server, input_path, tmp_path / "out")
        test_split = [f if f != "--split=train" else "--split=test" for f in flags]
        assert annotate.main(test_split) == 2
        assert "--exemplars_from jsonl:PATH" in capsys.readouterr().err
        odd = tmp_path / "Not A Name" / "rows.jsonl"
        odd.parent.mkdir()
        odd.write_text((tmp_path / "sums" / "train.jsonl").read_text())
        assert annotate.main(auto_flags(server, odd, tmp_path / "out2")) == 2
        assert "--name" in capsys.readouterr().err
        # The server knows no question: nothing parses, and the error says what to do.
        assert annotate.main(auto_flags(server, input_path, tmp_path / "out3")) == 2
        assert "none of the teacher's zero-shot answers" in capsys.readouterr().err
