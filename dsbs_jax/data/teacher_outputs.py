"""Splitting a teacher's raw chain-of-thought output into its rationale and its label.

A few-shot prompted teacher writes a rationale, an answer marker and the answer, and then
often goes on to invent the next exemplar. Each dataset's `AnswerFormat` says where to cut
that invention off, which marker ends the rationale, and how to pick the label out of the
text after it. Each dataset declares its format (`datasets.py`: the paper's follow the
rules of its reference code, google-research/distilling-step-by-step's `data_utils.py`, so
that its teacher accuracies reproduce); a prompt file may give one for a dataset not
declared. An output that does not fit its format is flagged for callers to count and drop;
it is never turned into a plausible-looking label.
"""

import dataclasses
import re

_EVERYTHING = r"[\s\S]*"


@dataclasses.dataclass(frozen=True)
class AnswerFormat:
    """How one dataset's teacher states its answer.

    cut_at: the output is cut at the first occurrence of this (the invented next exemplar).
    marker: ends the rationale and introduces the answer. It must occur exactly once in the
        cut output; it is also the phrase a chain-of-thought target states the answer with.
    label_pattern: searched in the text after the marker; the label is its first group, or
        the whole match when it has none, with surrounding whitespace stripped.
    label_description: what label_pattern looks for, to say why an output did not parse
        ("no {label_description} after {marker}").
    drop_final_period: remove one final "." from the label.
    """

    cut_at: str
    marker: str
    label_pattern: str = _EVERYTHING
    label_description: str = "label"
    drop_final_period: bool = True

    def __post_init__(self):
        if not self.cut_at or not self.marker:
            raise ValueError(f"cut_at and marker must be non-empty: {self}")
        try:
            re.compile(self.label_pattern)
        except re.error as error:
            raise ValueError(f"bad label_pattern {self.label_pattern!r}: {error}") from error


@dataclasses.dataclass(frozen=True)
class TeacherOutput:
    """A parsed output. When `parsed` is False, rationale and label are empty and
    `problem` says why."""

    raw: str
    rationale: str
    label: str
    parsed: bool
    problem: str = ""


# Each dataset's, from its declaration (`datasets.declare`), and those prompt files give.
ANSWER_FORMATS: dict[str, AnswerFormat] = {}
# A user's dataset that declares no format of its own: its chain-of-thought targets and an
# automatic prompt's teacher state the answer so.
DEFAULT_ANSWER_FORMAT = AnswerFormat(cut_at="Q:", marker="So the answer is")


def register_answer_format(name: str, fmt: AnswerFormat) -> None:
    """Adds a dataset's format. Registering a different format under a taken name is an
    error, so that one dataset cannot silently change another's labels."""
    if name in ANSWER_FORMATS and ANSWER_FORMATS[name] != fmt:
        raise ValueError(f"dataset {name!r} already has answer format {ANSWER_FORMATS[name]}")
    ANSWER_FORMATS[name] = fmt


def answer_format(dataset: str) -> AnswerFormat:
    if dataset not in ANSWER_FORMATS:
        known = ", ".join(sorted(ANSWER_FORMATS))
        raise ValueError(f"no answer format for dataset {dataset!r}; known: {known}")
    return ANSWER_FORMATS[dataset]


def _unparsed(raw: str, problem: str) -> TeacherOutput:
    return TeacherOutput(raw=raw, rationale="", label="", parsed=False, problem=problem)


def parse_with(fmt: AnswerFormat, raw: str) -> TeacherOutput:
    """Applies one format's rules to one raw output."""
    kept = raw.split(fmt.cut_at, 1)[0]
    markers = kept.count(fmt.marker)
    if markers != 1:
        problem = (
            f"no {fmt.marker!r} marker" if markers == 0 else f"{markers} {fmt.marker!r} markers"
        )
        return _unparsed(raw, problem)
    rationale, answer = kept.split(fmt.marker)
    match = re.search(fmt.label_pattern, answer)
    if match is None:
        return _unparsed(raw, f"no {fmt.label_description} after {fmt.marker!r}")
    label = (match.group(1) if match.re.groups else match.group(0)).strip()
    if fmt.drop_final_period:
        label = label.removesuffix(".").rstrip()
    if not label:
        return _unparsed(raw, f"empty label after {fmt.marker!r}")
    return TeacherOutput(raw=raw, rationale=rationale.strip(), label=label, parsed=True)


def parse(dataset: str, raw: str) -> TeacherOutput:
    """Parses `raw` with `dataset`'s registered format."""
    return parse_with(answer_format(dataset), raw)
