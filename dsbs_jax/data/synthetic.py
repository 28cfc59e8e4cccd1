"""The embedded default dataset: generated arithmetic word problems and a rule-based teacher.

The quickstart must train on a machine with nothing downloaded, on data shaped like the
paper's release: gold labels, and raw teacher chain-of-thought that ends in "So the answer
is N." and, like PaLM's, often runs on into an invented next question that parsers must cut
off. A set share of the teacher's answers is wrong (one plausible slip, carried through the
rest of the rationale), so learning from teacher labels is noisy as it is with a real LLM.

`write_release` lays the data out as the paper's release does (the `dsbs_synthetic` builder
reads it from the manual dir), `train_vocabulary` makes a small SentencePiece model for it,
and `majority_baseline` gives the accuracy a student must beat. Everything is a function of
the seed. Pure Python, numpy and sentencepiece: no TensorFlow.
"""

import collections
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator

import numpy as np
from etils import epath

from dsbs_jax.data import release, vocabulary
from dsbs_jax.data.datasets import RELEASE_SPLITS, SPLITS
from dsbs_jax.files import write_atomically

NAME = "synthetic"
TEACHER_CHUNK_SIZE = 1000
ANSWER_MARKER = "So the answer is"
TASK_PREFIXES = ("predict:", "explain:")
CONTINUATION_SHARE = 0.6  # of teacher outputs that run on into an invented "Q: ..."

# Test first, then validation, then train, each excluding the questions before it: the test
# set then depends only on the seed and its size, not on how much training data is asked for.
_GENERATION_ORDER = ("test", "validation", "train")
_STREAMS = ("problems", "teacher")
# Small enough that a tiny T5 trained from scratch for a few CPU minutes (the quickstart)
# learns to answer well above the majority baseline: counts up to 60, one or two events.
_MAX_COUNT = 60
_STEPS = (1, 2)  # events per story, inclusive
_START = (5, 30)  # the first count, inclusive
_MAX_OPERAND = 9  # of "buys n more" and "gives away n"
_MAX_GROUPS, _MAX_PER_GROUP = 3, 5  # of "k bags with m each"


@dataclasses.dataclass(frozen=True)
class Event:
    """One step of a story: the running count becomes `count op product(factors)`.

    `factors` is one number, or (groups, per_group) for "3 bags with 4 apples each", whose
    `group_noun` ("bags") the teacher's rationale repeats.
    """

    op: str
    factors: tuple[int, ...]
    sentence: str
    group_noun: str = ""


@dataclasses.dataclass(frozen=True)
class WordProblem:
    """A generated problem and how it was made, so tests can recompute its answer."""

    owner: str
    objects: str
    start: int
    events: tuple[Event, ...]
    question: str
    answer: int


@dataclasses.dataclass(frozen=True)
class Slip:
    """The teacher's one mistake, on its `line`-th arithmetic line (0-based).

    `misread`: the second operand is off by `amount`; `swapped_op`: the wrong operation;
    `miscalculated`: the result is off by `amount`. Later lines build on the slipped value.
    """

    line: int
    kind: str
    amount: int


@dataclasses.dataclass(frozen=True)
class TeacherOutput:
    """The teacher's raw text, the answer its rationale reaches, and its slip if wrong."""

    text: str
    answer: int
    slip: Slip | None


@dataclasses.dataclass(frozen=True)
class Example:
    """One row of a split: its release id, the problem and the teacher's output for it."""

    id: str
    problem: WordProblem
    teacher: TeacherOutput


@dataclasses.dataclass(frozen=True)
class _Frame:
    """A kind of story: who owns the objects and the sentences each operation can take.

    Templates fill {s} (the sentence's subject), {n}, {k}, {m}, {times}, {obj} and {box}.
    """

    owners: tuple[tuple[str, str], ...]  # (name, pronoun)
    objects: tuple[str, ...]
    boxes: tuple[str, ...]
    phrases: dict[str, tuple[str, ...]]


_PERSON_PHRASES = {
    "+": (
        "{s} buys {n} more {obj}.",
        "{s} finds {n} more {obj}.",
        "{s} gets {n} more {obj} from a friend.",
    ),
    "+groups": (
        "{s} buys {k} {box} with {m} {obj} each.",
        "{s} gets {k} {box} with {m} {obj} each as a gift.",
    ),
    "-": ("{s} gives away {n} {obj}.", "{s} loses {n} {obj}."),
    "-groups": ("{s} fills {k} {box} with {m} {obj} each and gives them away.",),
    "*": ("{s} collects more until there are {times} as many {obj} as before.",),
    "/": ("{s} splits the {obj} into {k} equal piles and keeps one pile.",),
}
_SHOP_PHRASES = {
    "+": ("{s} receives {n} more {obj}.", "{s} gets {n} more {obj} from a supplier."),
    "+groups": ("{s} receives {k} {box} with {m} {obj} each.",),
    "-": ("{s} sells {n} {obj}.",),
    "-groups": ("{s} sells {k} {box} with {m} {obj} each.",),
    "*": ("{s} restocks until it has {times} as many {obj} as before.",),
    "/": ("{s} splits the {obj} into {k} equal shares for its stores and keeps one share.",),
}
_NAMES = ("Mia", "Liam", "Ava", "Noah", "Zoe", "Omar", "Sofia", "Ravi", "Emma", "Leo", "Nina")
_FRAMES = (
    _Frame(
        owners=tuple((name, "she" if i % 2 == 0 else "he") for i, name in enumerate(_NAMES)),
        objects=("apples", "marbles", "stickers", "pencils", "cookies", "cards", "shells"),
        boxes=("bags", "boxes", "packs", "jars"),
        phrases=_PERSON_PHRASES,
    ),
    _Frame((("the bakery", "it"),), ("muffins", "cookies", "rolls"), ("trays",), _SHOP_PHRASES),
    _Frame((("the toy shop", "it"),), ("toys", "balls", "puzzles"), ("crates",), _SHOP_PHRASES),
    _Frame((("the farm stand", "it"),), ("eggs", "melons", "pears"), ("baskets",), _SHOP_PHRASES),
)
_CONNECTIVES = ("Then {p}", "After that, {p}", "Next, {p}", "{p}")
_TIMES = {2: "twice", 3: "three times"}
_SWAPPED_OP = {"+": "-", "-": "+", "*": "+", "/": "*"}
_SLIP_KINDS = (
    ("misread", -1),
    ("misread", 1),
    ("miscalculated", -10),
    ("miscalculated", -1),
    ("miscalculated", 1),
    ("miscalculated", 10),
    ("swapped_op", 0),
)


# ---------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------


def _exact(a: int, op: str, b: int) -> int | None:
    """`a op b` in integers, or None for a division that does not come out even."""
    if op == "/":
        return a // b if b > 0 and a % b == 0 else None
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def _pick(rng: np.random.Generator, options: tuple) -> object:
    return options[rng.integers(len(options))]


def _step(rng: np.random.Generator, total: int) -> tuple[str, str, tuple[int, ...]]:
    """A random operation that keeps the count between 2 and `_MAX_COUNT`, with its numbers.

    Returns the phrase key, the operation and its factors.
    """
    room = _MAX_COUNT - total
    divisors = [k for k in range(2, 6) if total % k == 0 and total // k >= 2]
    feasible = [
        key
        for key, ok in (
            ("+", room >= 2),
            ("+groups", room >= 4),
            ("-", total >= 4),
            ("-groups", total >= 6),
            ("*", total * 2 <= _MAX_COUNT),
            ("/", bool(divisors)),
        )
        if ok
    ]
    key = _pick(rng, tuple(feasible))
    if key == "+":
        return key, "+", (int(rng.integers(2, min(_MAX_OPERAND, room) + 1)),)
    if key == "-":
        return key, "-", (int(rng.integers(2, min(_MAX_OPERAND, total - 2) + 1)),)
    if key == "*":
        return key, "*", (int(rng.integers(2, min(3, _MAX_COUNT // total) + 1)),)
    if key == "/":
        return key, "/", (int(_pick(rng, tuple(divisors))),)
    limit = room if key == "+groups" else total - 2
    groups = int(rng.integers(2, min(_MAX_GROUPS, limit // 2) + 1))
    per_group = int(rng.integers(2, min(_MAX_PER_GROUP, limit // groups) + 1))
    return key, key[0], (groups, per_group)


def _generate_problem(rng: np.random.Generator) -> WordProblem:
    """A story of `_STEPS` events about one owner's objects, asking for the final count."""
    frame = _pick(rng, _FRAMES)
    owner, pronoun = _pick(rng, frame.owners)
    objects, box = _pick(rng, frame.objects), _pick(rng, frame.boxes)
    start = total = int(rng.integers(_START[0], _START[1] + 1))
    sentences = [f"{_capitalize(owner)} has {start} {objects}."]
    events = []
    for position in range(int(rng.integers(_STEPS[0], _STEPS[1] + 1))):
        key, op, factors = _step(rng, total)
        connective = _CONNECTIVES[-1] if position == 0 else _pick(rng, _CONNECTIVES)
        subject = _capitalize(connective.format(p=pronoun))
        sentence = _pick(rng, frame.phrases[key]).format(
            s=subject,
            n=factors[0],
            k=factors[0],
            m=factors[-1],
            times=_TIMES.get(factors[0]),
            obj=objects,
            box=box,
        )
        sentences.append(sentence)
        events.append(Event(op, factors, sentence, box if len(factors) == 2 else ""))
        total = _exact(total, op, math.prod(factors))
    sentences.append(f"How many {objects} does {owner} have now?")
    return WordProblem(owner, objects, start, tuple(events), " ".join(sentences), total)


def _unique_problems(count: int, rng: np.random.Generator, seen: set[str]) -> list[WordProblem]:
    """`count` problems whose questions are not in `seen` nor repeated; adds them to `seen`."""
    problems = []
    while len(problems) < count:
        problem = _generate_problem(rng)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems


# ---------------------------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------------------------


def _written_line(a: int, op: str, b: int, slip: Slip | None) -> tuple[int, str, int, int] | None:
    """The line "a op b = c" as the teacher writes it, with `slip` made on it.

    None where the slip leads somewhere no teacher would write (a negative count, an uneven
    division), so that slip is not used.
    """
    if slip is not None and slip.kind == "misread":
        b += slip.amount
    if slip is not None and slip.kind == "swapped_op":
        op = _SWAPPED_OP[op]
    result = _exact(a, op, b) if b > 0 else None
    if result is not None and slip is not None and slip.kind == "miscalculated":
        result += slip.amount
    return None if result is None or result < 0 else (a, op, b, result)


def _worked_solution(problem: WordProblem, slip: Slip | None) -> tuple[str, int] | None:
    """The teacher's step-by-step rationale and the count it reaches, with `slip` made."""
    sentences = [f"{_capitalize(problem.owner)} starts with {problem.start} {problem.objects}."]
    total, line = problem.start, 0
    for event in problem.events:
        operand = event.factors[0]
        if len(event.factors) == 2:
            written = _written_line(event.factors[0], "*", event.factors[1], _on(slip, line))
            if written is None:
                return None
            groups, op, per_group, operand = written
            sentences.append(
                f"{groups} {event.group_noun} with {per_group} {problem.objects} each is "
                f"{groups} {op} {per_group} = {operand} {problem.objects}."
            )
            line += 1
        written = _written_line(total, event.op, operand, _on(slip, line))
        if written is None:
            return None
        a, op, b, total = written
        sentences.append(f"{a} {op} {b} = {total}.")
        line += 1
    return " ".join(sentences), total


def _on(slip: Slip | None, line: int) -> Slip | None:
    """`slip` if it is made on `line`."""
    return slip if slip is not None and slip.line == line else None


def _invented_continuation(rng: np.random.Generator) -> str:
    """A next question and the start of its answer, cut off mid-way as a length limit would."""
    problem = _generate_problem(rng)
    rationale, answer = _worked_solution(problem, None)
    words = f"Q: {problem.question}\nA: {rationale} {ANSWER_MARKER} {answer}.".split(" ")
    return "\n\n" + " ".join(words[: int(rng.integers(3, len(words) + 1))])


def _teach(problem: WordProblem, wrong: bool, rng: np.random.Generator) -> TeacherOutput:
    """The teacher's raw output for `problem`; if `wrong`, with one slip that changes the answer."""
    slip = None
    rationale, answer = _worked_solution(problem, None)
    if wrong:
        lines = sum(len(event.factors) for event in problem.events)
        candidates = [Slip(line, *kind) for line in range(lines) for kind in _SLIP_KINDS]
        # A +1 miscalculation on the last line always qualifies, so a candidate is found.
        slip, (rationale, answer) = next(
            (candidates[i], solution)
            for i in rng.permutation(len(candidates))
            if (solution := _worked_solution(problem, candidates[i])) is not None
            and solution[1] != problem.answer
        )
    text = f"{rationale} {ANSWER_MARKER} {answer}."
    if rng.random() < CONTINUATION_SHARE:
        text += _invented_continuation(rng)
    return TeacherOutput(text, answer, slip)


def resample(
    problem: WordProblem, wrong_fraction: float, rng: np.random.Generator
) -> TeacherOutput:
    """Another answer of the rule-based teacher to `problem`, wrong with probability
    `wrong_fraction`: what a sampled teacher LLM does (self-consistency, `--prompt auto`)."""
    return _teach(problem, bool(rng.random() < wrong_fraction), rng)


# ---------------------------------------------------------------------------------------------
# Splits and the release layout
# ---------------------------------------------------------------------------------------------


def _rng(seed: int, split: str, stream: str) -> np.random.Generator:
    """An independent random stream per (seed, split, purpose)."""
    return np.random.default_rng([seed, SPLITS.index(split), _STREAMS.index(stream)])


def generate_splits(
    num_train: int = 10_000,
    num_validation: int = 200,
    num_test: int = 300,
    wrong_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[Example]]:
    """The examples of each split with their generation records, keyed by `SPLITS`.

    Exactly round(wrong_fraction * n) teacher answers of each split are wrong. No question
    appears twice, within a split or across splits.
    """
    if not 0.0 <= wrong_fraction <= 1.0:
        raise ValueError(f"wrong_fraction must be in [0, 1], got {wrong_fraction}")
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    seen: set[str] = set()
    splits = {}
    for split in _GENERATION_ORDER:
        problems = _unique_problems(sizes[split], _rng(seed, split, "problems"), seen)
        teacher_rng = _rng(seed, split, "teacher")
        num_wrong = round(wrong_fraction * len(problems))
        wrong = set(teacher_rng.choice(len(problems), num_wrong, replace=False).tolist())
        splits[split] = [
            Example(f"{NAME}-{split}-{i:05d}", problem, _teach(problem, i in wrong, teacher_rng))
            for i, problem in enumerate(problems)
        ]
    return {split: splits[split] for split in SPLITS}


def _rows_path(release_dir: epath.Path, split: str) -> epath.Path:
    return release_dir / f"{NAME}_{RELEASE_SPLITS[split]}.json"


def write_release(
    manual_dir: epath.Path,
    num_train: int = 10_000,
    num_validation: int = 200,
    num_test: int = 300,
    wrong_fraction: float = 0.15,
    seed: int = 0,
) -> epath.Path:
    """Write the dataset in the paper's release layout under `manual_dir / "synthetic"`.

    `synthetic_{train,valid,test}.json` hold JSON lines (`id`, `question`, `answer`);
    `llm/{split}_CoT_{k}.json` hold the teacher's raw outputs, 1000 rows per chunk. The same
    arguments always give byte-identical files; chunks left from a larger earlier run are
    removed so they cannot be read as part of this one. Returns the dataset folder.
    """
    release_dir = epath.Path(manual_dir) / NAME
    (release_dir / "llm").mkdir(parents=True, exist_ok=True)
    splits = generate_splits(num_train, num_validation, num_test, wrong_fraction, seed)
    for split, examples in splits.items():
        rows = [
            {"id": ex.id, "question": ex.problem.question, "answer": str(ex.problem.answer)}
            for ex in examples
        ]
        lines = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        write_atomically(_rows_path(release_dir, split), lines.encode())
        outputs = [ex.teacher.text for ex in examples]
        chunks = [
            outputs[i : i + TEACHER_CHUNK_SIZE] for i in range(0, len(outputs), TEACHER_CHUNK_SIZE)
        ] or [[]]
        for k, chunk in enumerate(chunks):
            chunk_path = release_dir / "llm" / f"{RELEASE_SPLITS[split]}_CoT_{k}.json"
            write_atomically(chunk_path, json.dumps(chunk).encode())
        written = release.teacher_chunk_files(release_dir / "llm", RELEASE_SPLITS[split])
        for stale in written[len(chunks) :]:
            stale.unlink()
    return release_dir


def majority_baseline(manual_dir: epath.Path, split: str = "test") -> float:
    """The share of the split's most frequent gold answer: what always guessing it scores."""
    answers = collections.Counter(
        row["answer"] for row in release.read_rows(_rows_path(epath.Path(manual_dir) / NAME, split))
    )
    return answers.most_common(1)[0][1] / answers.total()


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------


def vocabulary_texts(questions: Iterable[str], teacher_outputs: Iterable[str]) -> Iterator[str]:
    """What the vocabulary is trained on: the questions as the student sees them (with each
    task prefix) and the teacher's outputs."""
    for question in questions:
        for prefix in TASK_PREFIXES:
            yield f"{prefix} {question}"
    yield from teacher_outputs


def _release_texts(manual_dir: epath.Path) -> Iterator[str]:
    release_dir = epath.Path(manual_dir) / NAME
    for split in SPLITS:
        rows = release.read_rows(_rows_path(release_dir, split))
        outputs = release.read_teacher_outputs(release_dir / "llm", RELEASE_SPLITS[split])
        yield from vocabulary_texts([row["question"] for row in rows], outputs)


def train_vocabulary(
    manual_dir_or_texts: epath.Path | Iterable[str], model_path: epath.Path, vocab_size: int = 256
) -> epath.Path:
    """Train the synthetic data's SentencePiece model on the release in a manual dir (a
    path), or on texts, plus the task prefixes and answer marker so they encode compactly.
    The default release gives about 190 pieces: `vocab_size` is only an upper bound."""
    texts = (
        _release_texts(manual_dir_or_texts)
        if isinstance(manual_dir_or_texts, str | os.PathLike)
        else manual_dir_or_texts
    )
    model = vocabulary.train_sentencepiece([*texts, *TASK_PREFIXES, ANSWER_MARKER], vocab_size)
    model_path = epath.Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(model_path, model)
    return model_path
