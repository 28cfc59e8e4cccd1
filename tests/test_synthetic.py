"""The embedded synthetic dataset: its generator, rule-based teacher, release files, vocabulary."""

import collections
import json
import math
import operator
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from dsbs_jax.data import synthetic

SIZES = dict(num_train=120, num_validation=30, num_test=50)
ARITHMETIC_LINE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
CONTINUATION = "\n\nQ:"


def compute(a: int, op: str, b: int) -> int:
    if op == "/":
        assert a % b == 0, f"{a} / {b} is not exact"
        return a // b
    return {"+": operator.add, "-": operator.sub, "*": operator.mul}[op](a, b)


def recomputed_answer(problem: synthetic.WordProblem) -> int:
    """The answer from the generation record alone: the start, then each step in order."""
    total = problem.start
    for event in problem.events:
        total = compute(total, event.op, math.prod(event.factors))
    return total


def rationale_and_label(teacher_text: str) -> tuple[str, int]:
    """What a parser keeps: cut the invented continuation, split at the answer marker."""
    rationale, label = teacher_text.split(CONTINUATION)[0].split(synthetic.ANSWER_MARKER)
    assert label.endswith(".")
    return rationale.strip(), int(label[:-1])


@pytest.fixture(scope="module")
def splits() -> dict[str, list[synthetic.Example]]:
    return synthetic.generate_splits(**SIZES, wrong_fraction=0.2, seed=3)


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    manual_dir = tmp_path_factory.mktemp("manual")
    synthetic.write_release(manual_dir, **SIZES, seed=5)
    return manual_dir


def synthetic_rows(manual_dir, name: str) -> list[dict]:
    lines = (manual_dir / "synthetic" / name).read_text().splitlines()
    return [json.loads(line) for line in lines]


def read_release(release_dir) -> dict[str, bytes]:
    return {
        str(p.relative_to(release_dir)): p.read_bytes()
        for p in Path(release_dir).rglob("*")
        if p.is_file()
    }


def test_release_is_deterministic_by_seed(manual_dir, tmp_path):
    release = read_release(manual_dir / "synthetic")
    assert sorted(release) == [
        "llm/test_CoT_0.json",
        "llm/train_CoT_0.json",
        "llm/valid_CoT_0.json",
        "synthetic_test.json",
        "synthetic_train.json",
        "synthetic_valid.json",
    ]
    again = synthetic.write_release(manual_dir, **SIZES, seed=5)  # rewritten in place
    assert read_release(again) == release
    elsewhere = synthetic.write_release(tmp_path / "a", **SIZES, seed=5)
    assert read_release(elsewhere) == release
    other_seed = read_release(synthetic.write_release(tmp_path / "b", **SIZES, seed=6))
    assert all(other_seed[name] != release[name] for name in release)


def test_rows_have_the_release_fields(manual_dir):
    rows = synthetic_rows(manual_dir, "synthetic_test.json")
    assert len(rows) == SIZES["num_test"]
    assert all(list(row) == ["id", "question", "answer"] for row in rows)
    assert all(row["answer"].isdigit() for row in rows)
    assert len({row["id"] for row in rows}) == len(rows)


def test_generation_record_matches_its_question(splits):
    for example in splits["train"]:
        problem = example.problem
        fewest, most = synthetic._STEPS
        assert fewest <= len(problem.events) <= most
        assert recomputed_answer(problem) == problem.answer
        assert 2 <= problem.answer <= synthetic._MAX_COUNT
        assert problem.question.startswith(f"{problem.owner[0].upper()}{problem.owner[1:]} has ")
        assert all(event.sentence in problem.question for event in problem.events)
        assert problem.question.endswith(
            f"How many {problem.objects} does {problem.owner} have now?"
        )


def test_wrong_fraction_is_met_and_only_wrong_answers_are_wrong(splits):
    for split, examples in splits.items():
        wrong = [ex.teacher.answer != recomputed_answer(ex.problem) for ex in examples]
        # Exactly round(0.2 * n) are wrong: the share is off by at most half an example.
        assert abs(sum(wrong) / len(examples) - 0.2) <= 0.5 / len(examples), split
        for example, is_wrong in zip(examples, wrong, strict=True):
            assert (example.teacher.slip is not None) == is_wrong
            assert rationale_and_label(example.teacher.text)[1] == example.teacher.answer


@pytest.mark.parametrize("wrong_fraction", [0.0, 1.0])
def test_wrong_fraction_extremes(wrong_fraction):
    examples = synthetic.generate_splits(20, 5, 5, wrong_fraction=wrong_fraction)["train"]
    wrong = [ex.teacher.answer != ex.problem.answer for ex in examples]
    assert wrong == [bool(wrong_fraction)] * len(examples)


def test_resampled_answers_are_wrong_at_the_rate_asked(splits):
    rng = np.random.default_rng(0)
    problems = [example.problem for example in splits["train"]]
    for wrong_fraction in (0.0, 0.3, 1.0):
        answers = [synthetic.resample(p, wrong_fraction, rng) for p in problems for _ in range(5)]
        wrong = [a.answer != p.answer for a, p in zip(answers, np.repeat(problems, 5), strict=True)]
        assert abs(np.mean(wrong) - wrong_fraction) < 0.1, wrong_fraction
        assert all(rationale_and_label(a.text)[1] == a.answer for a in answers)


def test_wrong_fraction_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="wrong_fraction"):
        synthetic.generate_splits(10, 2, 2, wrong_fraction=1.5)


def test_rationale_arithmetic_is_right_and_carries_slips_through(splits):
    for example in (ex for examples in splits.values() for ex in examples):
        rationale, label = rationale_and_label(example.teacher.text)
        lines = ARITHMETIC_LINE.findall(rationale)
        assert len(lines) == sum(len(event.factors) for event in example.problem.events)
        mistakes = [line for line in lines if compute(*map_ints(line[:3])) != int(line[3])]
        slip = example.teacher.slip
        assert len(mistakes) == (slip is not None and slip.kind == "miscalculated")
        assert int(lines[-1][3]) == label  # the label is where the written steps lead


def map_ints(line: tuple[str, str, str]) -> tuple[int, str, int]:
    return int(line[0]), line[1], int(line[2])


def test_some_outputs_run_on_into_an_invented_question(splits):
    texts = [ex.teacher.text for ex in splits["train"]]
    continued = [text for text in texts if CONTINUATION in text]
    assert 0 < len(continued) < len(texts)
    assert all(text.split(CONTINUATION)[1].startswith(" ") for text in continued)
    assert all("Q:" not in text.split(CONTINUATION)[0] for text in texts)


def test_no_question_repeats_within_or_across_splits(splits):
    questions = [ex.problem.question for examples in splits.values() for ex in examples]
    assert len(set(questions)) == len(questions)


def test_test_split_does_not_depend_on_the_train_size():
    bigger = synthetic.generate_splits(num_train=300, num_validation=30, num_test=50, seed=3)
    assert bigger["test"] == synthetic.generate_splits(**SIZES, seed=3)["test"]


def test_teacher_chunks_line_up_with_rows(tmp_path):
    sizes = dict(num_train=2001, num_validation=3, num_test=3, seed=1)
    release_dir = synthetic.write_release(tmp_path, **sizes)
    chunks = [
        json.loads((release_dir / "llm" / f"train_CoT_{k}.json").read_text()) for k in range(3)
    ]
    assert [len(chunk) for chunk in chunks] == [1000, 1000, 1]
    examples = synthetic.generate_splits(**sizes)["train"]
    assert [text for chunk in chunks for text in chunk] == [ex.teacher.text for ex in examples]
    rows = synthetic_rows(tmp_path, "synthetic_train.json")
    assert [row["question"] for row in rows] == [ex.problem.question for ex in examples]
    synthetic.write_release(tmp_path, num_train=5, num_validation=3, num_test=3, seed=1)
    assert [p.name for p in (release_dir / "llm").glob("train_CoT_*")] == ["train_CoT_0.json"]


def test_majority_baseline(manual_dir):
    answers = [row["answer"] for row in synthetic_rows(manual_dir, "synthetic_test.json")]
    top_count = collections.Counter(answers).most_common(1)[0][1]
    assert synthetic.majority_baseline(manual_dir) == top_count / SIZES["num_test"]


def test_vocabulary_follows_t5_and_encodes_every_question(manual_dir, tmp_path):
    model_path = synthetic.train_vocabulary(manual_dir, tmp_path / "a" / "spiece.model")
    vocab = spm.SentencePieceProcessor(model_file=str(model_path))
    assert (vocab.pad_id(), vocab.eos_id(), vocab.unk_id(), vocab.bos_id()) == (0, 1, 2, -1)
    assert vocab.get_piece_size() <= 256
    for name in ("synthetic_train.json", "synthetic_valid.json", "synthetic_test.json"):
        for row in synthetic_rows(manual_dir, name):
            ids = vocab.encode(row["question"])
            assert vocab.unk_id() not in ids
            assert vocab.decode(ids) == row["question"]
    for prefix in synthetic.TASK_PREFIXES:
        assert len(vocab.encode(prefix)) == 1, prefix
    again = synthetic.train_vocabulary(manual_dir, tmp_path / "b.model")
    assert again.read_bytes() == model_path.read_bytes()


def test_vocabulary_from_texts(tmp_path):
    texts = ["Mia has 7 apples.", "So the answer is 14."] * 5
    model_path = synthetic.train_vocabulary(texts, tmp_path / "t.model", vocab_size=64)
    vocab = spm.SentencePieceProcessor(model_file=str(model_path))
    unseen = "predict: Mia has 14 apples."  # the task strings are always part of training
    assert vocab.decode(vocab.encode(unseen)) == unseen


def test_imports_without_tensorflow():
    code = (
        "import sys, dsbs_jax.data.synthetic\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "heavy = loaded & {'tensorflow', 'tensorflow_datasets', 'seqio'}\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
