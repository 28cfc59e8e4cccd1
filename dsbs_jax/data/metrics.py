"""Metric functions for label and rationale predictions, in SeqIO's form.

Each metric takes `(targets, predictions)` as SeqIO's Evaluator passes them and returns
named scores in percent, as T5's metrics do. The per-pair tests (`labels_match`,
`equations_match`) are public so that the teacher's labels are scored by the same rules.
SVAMP equations are evaluated by a small parser of their arithmetic, never by `eval`:
predictions are model output and must not run as code.
"""

import functools
import itertools
import math
import re
from collections.abc import Sequence

import numpy as np
from rouge_score import rouge_scorer

NLI_CLASSES = ("entailment", "neutral", "contradiction")
# Float rounding only, so that 0.1 + 0.2 equals 0.3. Not looser: SVAMP answers reach
# millions, and at 1e-4 the teacher's 610769 + 590796 + 22 would equal 610769 + 590796.
EQUATION_RELATIVE_TOLERANCE = 1e-9
# Deeper nesting than this is not an equation a student or teacher writes; it also bounds
# the parser's recursion.
MAX_EQUATION_DEPTH = 100

_TOKEN = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]*)?|\.[0-9]+)|([-+*/()]))")


def normalise(text: str) -> str:
    """Removes surrounding whitespace only; case and inner text are kept.

    The reference compares decoded strings exactly, and the teacher accuracies it reports
    (CQA 7,234 / 9,741) need case kept: the teacher writes "California" where the gold
    label is "california".
    """
    return text.strip()


def labels_match(target: str, prediction: str) -> bool:
    return normalise(target) == normalise(prediction)


class _NotArithmetic(Exception):
    """The text is not numbers, + - * /, unary minus and parentheses."""


def _tokens(text: str) -> list[str]:
    tokens, position, end = [], 0, len(text.rstrip())
    while position < end:
        match = _TOKEN.match(text, position)
        if match is None:
            raise _NotArithmetic(text[position:])
        tokens.append(match.group(1) or match.group(2))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent over: expression = term (("+" | "-") term)*;
    term = factor (("*" | "/") factor)*; factor = "-" factor | number | "(" expression ")"."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _NotArithmetic("unexpected end")
        self.position += 1
        return token

    def expression(self, depth: int) -> float:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            operator, right = self.take(), self.term(depth)
            value = value + right if operator == "+" else value - right
        return value

    def term(self, depth: int) -> float:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            operator, right = self.take(), self.factor(depth)
            value = value * right if operator == "*" else value / right
        return value

    def factor(self, depth: int) -> float:
        if depth > MAX_EQUATION_DEPTH:
            raise _NotArithmetic("nested too deeply")
        token = self.take()
        if token == "-":
            return -self.factor(depth + 1)
        if token == "(":
            value = self.expression(depth + 1)
            if self.take() != ")":
                raise _NotArithmetic("unbalanced parenthesis")
            return value
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        raise _NotArithmetic(token)


def equation_value(text: str) -> float | None:
    """The value of an arithmetic expression such as `( 84.0 / 2.0 )`, or None when the text
    is anything else, divides by zero or overflows. Nothing in `text` is executed."""
    try:
        parser = _Parser(_tokens(text))
        value = parser.expression(depth=0)
        if parser.peek() is not None:
            raise _NotArithmetic(parser.peek())
    except (_NotArithmetic, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def equations_match(target: str, prediction: str) -> bool:
    """Both evaluate, to values equal within `EQUATION_RELATIVE_TOLERANCE`."""
    target_value, prediction_value = equation_value(target), equation_value(prediction)
    if target_value is None or prediction_value is None:
        return False
    return math.isclose(
        target_value, prediction_value, rel_tol=EQUATION_RELATIVE_TOLERANCE, abs_tol=1e-9
    )


def _mean_percent(values: Sequence[float]) -> float:
    """The mean x 100; NaN for no values, as there is nothing to score."""
    return 100.0 * float(np.mean(values)) if len(values) else float("nan")


def _pairs(targets: Sequence[str], predictions: Sequence[str]) -> list[tuple[str, str]]:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    return list(zip(targets, predictions, strict=True))


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percent of predictions equal to their target after `normalise`."""
    return {"accuracy": _mean_percent([labels_match(*p) for p in _pairs(targets, predictions)])}


def equation_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """SVAMP: percent of predicted equations whose value equals the target's."""
    return {"accuracy": _mean_percent([equations_match(*p) for p in _pairs(targets, predictions)])}


def nli_metrics(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Accuracy, accuracy within each gold class, and the confusion matrix as one scalar
    per cell, `confusion/{gold}->{predicted}` (scalars, so SeqIO's loggers can write them).
    A prediction that is no class counts as wrong and falls outside the matrix;
    `unrecognised_predictions` counts those."""
    pairs = [(normalise(t), normalise(p)) for t, p in _pairs(targets, predictions)]
    if unknown := {gold for gold, _ in pairs} - set(NLI_CLASSES):
        raise ValueError(f"targets {sorted(unknown)} are not NLI classes {NLI_CLASSES}")
    confusion = np.zeros((3, 3), dtype=int)
    for gold, predicted in pairs:
        if predicted in NLI_CLASSES:
            confusion[NLI_CLASSES.index(gold), NLI_CLASSES.index(predicted)] += 1
    scores: dict[str, float] = {"accuracy": _mean_percent([g == p for g, p in pairs])}
    for name in NLI_CLASSES:
        scores[f"accuracy_{name}"] = _mean_percent([p == name for g, p in pairs if g == name])
    for (row, gold), (column, predicted) in itertools.product(enumerate(NLI_CLASSES), repeat=2):
        scores[f"confusion/{gold}->{predicted}"] = int(confusion[row, column])
    scores["unrecognised_predictions"] = sum(p not in NLI_CLASSES for _, p in pairs)
    return scores


@functools.cache
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-L F-measure x 100 of rationales (Porter-stemmed, as T5's `rouge`)."""
    scorer = _rouge_scorer()
    scores = [scorer.score(t, p)["rougeL"].fmeasure for t, p in _pairs(targets, predictions)]
    return {"rouge_l": _mean_percent(scores)}
