"""Every dataset, declared once (`Dataset`); the rest of the project derives from the
declaration: its TFDS builder `dsbs_{name}` (`builders.builder`), the format its teacher's
answers are parsed by (`teacher_outputs`), and its SeqIO tasks `dsbs_{name}_*` (`tasks/`).

The paper's datasets are declared here; a user declares theirs in a task module with
`declare(Dataset(...))`, or with `tasks.jsonl.jsonl_dataset(...)` for JSON-lines rows.
"""

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable, Sequence

from dsbs_jax.data import metrics, teacher_outputs
from dsbs_jax.data.teacher_outputs import AnswerFormat

MetricFn = Callable[[Sequence[str], Sequence[str]], dict]

SPLITS = ("train", "validation", "test")
RELEASE_SPLITS = {"train": "train", "validation": "valid", "test": "test"}  # ours -> on disk
# The reference joins premise and hypothesis with T5's EOS token string, no spaces.
NLI_SEPARATOR = "</s>"
# Which SentencePiece model a dataset's tasks use: T5's (the VOCABULARY binding), or the
# dataset's own, next to its TFDS data.
T5_VOCABULARY = "t5"
OWN_VOCABULARY = "own"
# It names the TFDS dataset `dsbs_{name}`, the tasks and the manual dir's folder.
NAME = re.compile(r"[a-z][a-z0-9_]*")


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise ValueError(
            f"dataset name {name!r}: expected lower-case letters, digits and '_', starting "
            "with a letter (it names the TFDS dataset dsbs_NAME and its tasks)"
        )


@dataclasses.dataclass(frozen=True)
class Field:
    """A row's `name` field as the input or label: a value, so that two declarations built
    from the same field names are equal (declaring one twice is not a conflict)."""

    name: str

    def __call__(self, row: dict) -> str:
        return row[self.name]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset: how its rows read, how its teacher answers, how it is scored.

    Rows (the paper's release layout, `release.py`; a JSONL dataset's builder reads its own,
    `jsonl_dataset.py`): every row has `fields`; `build_input` and `build_label` make a
    row's model input and gold label; `id_field` is the row's own id, if it has one
    (otherwise `{name}-{release split}-{row index}`); `has_validation`: the release has a
    `{name}_valid.json`, else validation is held out of train.
    The teacher: `answer_format` cuts and parses its raw outputs; `label_matches` says
    whether its label is the gold one (dsbs-prepare's table, the teacher's votes).
    The tasks: `label_metrics` score predicted labels; `vocabulary` is `T5_VOCABULARY` or
    `OWN_VOCABULARY`; `in_mixtures` puts its tasks in the `dsbs_label_*` and
    `dsbs_rationale` mixtures (of the datasets sharing T5's vocabulary). `version` is its
    TFDS builder's.
    """

    name: str
    fields: tuple[str, ...]
    build_input: Callable[[dict], str]
    build_label: Callable[[dict], str]
    id_field: str | None = None
    has_validation: bool = False
    answer_format: AnswerFormat = teacher_outputs.DEFAULT_ANSWER_FORMAT
    label_matches: Callable[[str, str], bool] = metrics.labels_match
    label_metrics: tuple[MetricFn, ...] = (metrics.accuracy,)
    vocabulary: str = T5_VOCABULARY
    in_mixtures: bool = True
    version: str = "1.0.0"

    def __post_init__(self):
        check_name(self.name)
        if self.vocabulary not in (T5_VOCABULARY, OWN_VOCABULARY):
            raise ValueError(
                f"{self.name}: vocabulary {self.vocabulary!r}: expected {T5_VOCABULARY!r} or "
                f"{OWN_VOCABULARY!r}"
            )
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "label_metrics", tuple(self.label_metrics))

    @property
    def tfds_name(self) -> str:
        return f"dsbs_{self.name}"

    @property
    def answer_phrase(self) -> str:
        """The phrase that introduces the answer: `rationale + " " + phrase + " " + label`."""
        return self.answer_format.marker

    def release_split(self, split: str) -> str:
        """The release split (file prefix) that holds our `split`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
        return (
            "train" if split == "validation" and not self.has_validation else RELEASE_SPLITS[split]
        )

    def rows_file(self, release_split: str) -> str:
        """The gold rows' file name, e.g. `cqa_train.json`."""
        return f"{self.name}_{release_split}.json"

    def vocabulary_file(self, data_dir: str | pathlib.Path, shared_path: str) -> str:
        """The shared (T5) SentencePiece model, or the dataset's own next to its TFDS data."""
        if self.vocabulary == OWN_VOCABULARY:
            return os.path.join(str(data_dir), self.tfds_name, "sentencepiece.model")
        return shared_path


DATASETS: dict[str, Dataset] = {}


def declare(dataset: Dataset) -> Dataset:
    """Add `dataset` (and its answer format, for the teacher's parsing). Declaring the same
    again is harmless; another dataset under a taken name is a ValueError, so that one
    module cannot silently change what another dataset is."""
    teacher_outputs.register_answer_format(dataset.name, dataset.answer_format)
    known = DATASETS.get(dataset.name)
    if known is not None and known != dataset:
        raise ValueError(
            f"dataset {dataset.name!r} is already declared otherwise "
            f"({_difference(known, dataset)}): expected the same declaration, or another name"
        )
    DATASETS[dataset.name] = dataset
    return dataset


def _difference(known: Dataset, new: Dataset) -> str:
    changed = [
        f"{f.name} {getattr(known, f.name)!r} there, {getattr(new, f.name)!r} now"
        for f in dataclasses.fields(Dataset)
        if getattr(known, f.name) != getattr(new, f.name)
    ]
    return "; ".join(changed)


def get(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {sorted(DATASETS)}")
    return DATASETS[name]


# ---------------------------------------------------------------------------------------------
# The paper's datasets, and the embedded synthetic one
# ---------------------------------------------------------------------------------------------


def _cqa_input(row: dict) -> str:
    choices = row["choices"]
    if len(choices) != 5:
        raise ValueError(f"expected 5 choices, found {len(choices)}")
    lines = [row["question"], "Answer Choices:"]
    lines += [f"({letter}) {choice}" for letter, choice in zip("abcde", choices, strict=True)]
    return "\n".join(lines)


def _nli_input(row: dict) -> str:
    return row["premise"] + NLI_SEPARATOR + row["hypothesis"]


def _nli_label(row: dict) -> str:
    if row["label"] not in (0, 1, 2):
        raise ValueError(f"label {row['label']!r} is not 0, 1 or 2")
    return metrics.NLI_CLASSES[row["label"]]


def _asdiv_label(row: dict) -> str:
    """The number at the start of the answer, as the reference: `9 (apples)` -> `9`."""
    return row["Answer"].split(" ")[0]


def _asdiv_input(row: dict) -> str:
    return row["Body"] + "\n" + row["Question"]


# The reference code's parse rules (google-research/distilling-step-by-step, data_utils.py).
# CQA: the choice text after the first "(x)" letter, up to the next letter or the end.
_CQA_FORMAT = AnswerFormat(
    "Q:", "So the answer is", r"\(.\)([\s\S]*?)(?:\(.\)|\Z)", "'(x)' choice letter"
)
# SVAMP: from the first "(" to the last ")" on the same line, e.g. "(84 / 2)".
_EQUATION_FORMAT = AnswerFormat(
    "Q:", "The answer is", r"\(.*\)", "parenthesised equation", drop_final_period=False
)
_NLI_FIELDS = ("premise", "hypothesis", "label")

for _dataset in (
    Dataset(
        name="cqa",
        fields=("id", "question", "choices", "answer"),
        build_input=_cqa_input,
        build_label=Field("answer"),
        id_field="id",
        answer_format=_CQA_FORMAT,
    ),
    Dataset(
        name="svamp",
        fields=("input", "label"),
        build_input=Field("input"),
        build_label=Field("label"),
        answer_format=_EQUATION_FORMAT,
        label_matches=metrics.equations_match,
        label_metrics=(metrics.equation_accuracy,),
    ),
    Dataset(
        name="esnli",
        fields=_NLI_FIELDS,
        build_input=_nli_input,
        build_label=_nli_label,
        has_validation=True,
        answer_format=AnswerFormat("Premise", "Answer:", drop_final_period=False),
        label_metrics=(metrics.nli_metrics,),
    ),
    Dataset(
        name="anli1",
        fields=("uid", *_NLI_FIELDS),
        build_input=_nli_input,
        build_label=_nli_label,
        id_field="uid",
        has_validation=True,
        answer_format=AnswerFormat("Premise:", "So the answer is"),
        label_metrics=(metrics.nli_metrics,),
    ),
    # Not one of the paper's four benchmarks: its tasks stay out of the mixtures (a run
    # over a mixture needs each of its datasets prepared).
    Dataset(
        name="asdiv",
        fields=("Body", "Question", "Answer"),
        build_input=_asdiv_input,
        build_label=_asdiv_label,
        answer_format=_EQUATION_FORMAT,
        label_matches=metrics.equations_match,
        label_metrics=(metrics.equation_accuracy,),
        in_mixtures=False,
    ),
    # Generated word problems with a rule-based teacher (`synthetic.py`) and their own
    # small vocabulary, trained by dsbs-prepare.
    Dataset(
        name="synthetic",
        fields=("id", "question", "answer"),
        build_input=Field("question"),
        build_label=Field("answer"),
        id_field="id",
        has_validation=True,
        answer_format=AnswerFormat("Q:", "So the answer is"),
        vocabulary=OWN_VOCABULARY,
        version="1.1.0",
    ),
):
    declare(_dataset)
