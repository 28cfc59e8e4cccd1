"""How sure the teacher was of what it wrote, from the log-probabilities of its tokens.

OpenAI-compatible servers (vLLM, TGI, llama.cpp, the OpenAI API) return, when asked, each
generated token with its log-probability and the top-k alternatives. `--logprobs K` stores
them with each output (`Tokens`); from them every parsed output gets a confidence: the mean
token log-probability of its rationale, of its label, and of both (`answer`), spans found by
parsing the tokens' own text with the dataset's answer format (the marker's tokens belong to
neither). `calibration` then says how that confidence relates to being right against gold, so
that a `--min_confidence` threshold can be chosen from evidence.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from dsbs_jax.data import teacher_outputs
from dsbs_jax.teacher import voting


@dataclasses.dataclass(frozen=True)
class Tokens:
    """One output's tokens as the server returned them: text, log-probability, and the top-k
    alternatives as (token, log-probability) pairs."""

    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]
    top: tuple[tuple[tuple[str, float], ...], ...]

    def to_json(self) -> dict:
        return {
            "tokens": list(self.tokens),
            "logprobs": list(self.logprobs),
            "top": [[list(pair) for pair in alternatives] for alternatives in self.top],
        }

    @classmethod
    def from_json(cls, data: dict) -> "Tokens":
        """Raises ValueError (or KeyError, TypeError) unless `data` is a `to_json` dict."""
        top = tuple(tuple((str(t), float(lp)) for t, lp in alts) for alts in data["top"])
        tokens = tuple(str(token) for token in data["tokens"])
        logprobs = tuple(map(float, data["logprobs"]))
        if not len(tokens) == len(logprobs) == len(top):
            raise ValueError("tokens, logprobs and top differ in length")
        return cls(tokens, logprobs, top)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def confidence(fmt: teacher_outputs.AnswerFormat, tokens: Tokens) -> dict | None:
    """Mean log-probability of the rationale's, the label's and both spans' tokens; None when
    the tokens' text does not parse (no label to be sure of)."""
    text = "".join(tokens.tokens)
    kept = text.split(fmt.cut_at, 1)[0]
    if not teacher_outputs.parse_with(fmt, kept).parsed:
        return None
    marker, end = kept.index(fmt.marker), len(kept.rstrip())
    rationale, label = [], []
    start = 0
    for token, logprob in zip(tokens.tokens, tokens.logprobs, strict=True):
        if not math.isfinite(logprob):
            logprob = -1e4  # a server's -inf: as unsure as can be, and still a number
        if start < marker:
            rationale.append(logprob)
        elif marker + len(fmt.marker) <= start < end:
            label.append(logprob)
        start += len(token)
    return {
        "rationale": _mean(rationale),
        "label": _mean(label),
        "answer": _mean(rationale + label),
    }


def _auroc(right: np.ndarray, scores: np.ndarray) -> float | None:
    """The chance that a right output is scored above a wrong one (ties count half)."""
    positive, negative = scores[right], scores[~right]
    if not len(positive) or not len(negative):
        return None
    above = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((above + 0.5 * ties) / (len(positive) * len(negative)))


def calibration(rows: Sequence[dict], dataset: str, bins: int = 5) -> dict | None:
    """Over every parsed output with a confidence and a gold label: accuracy per confidence
    quantile bin, and the AUROC of the answer confidence for telling right from wrong.
    None when no output qualifies."""
    matches = voting.label_matcher(dataset)
    points = [
        (row["confidence"][i]["answer"], matches(row["gold"], label))
        for row in rows
        if row["gold"] is not None and row.get("confidence")
        for i, label in enumerate(row["labels"])
        if label is not None and row["confidence"][i] is not None
    ]
    if not points:
        return None
    scores = np.array([score for score, _ in points])
    right = np.array([ok for _, ok in points])
    order = np.argsort(scores, kind="stable")
    table = []
    for chunk in np.array_split(order, min(bins, len(order))):
        table.append(
            {
                "from": float(scores[chunk].min()),
                "to": float(scores[chunk].max()),
                "outputs": len(chunk),
                "accuracy": float(right[chunk].mean()),
            }
        )
    return {
        "outputs": len(points),
        "accuracy": float(right.mean()),
        "auroc": _auroc(right, scores),
        "bins": table,
    }


def plot(report: dict, title: str, path) -> None:
    """Accuracy against confidence, one point per bin (sized by its outputs), as a PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4), layout="constrained")
    ax = figure.subplots()
    centres = [(b["from"] + b["to"]) / 2 for b in report["bins"]]
    accuracy = [100 * b["accuracy"] for b in report["bins"]]
    ax.plot(centres, accuracy, "-", color="C0")
    ax.scatter(centres, accuracy, s=[10 + b["outputs"] for b in report["bins"]], color="C0")
    ax.axhline(100 * report["accuracy"], color="grey", linestyle=":", label="all outputs")
    auroc = report["auroc"]
    ax.set_title(f"{title} (AUROC {auroc:.2f})" if auroc is not None else title)
    ax.set_xlabel("mean token log-probability of rationale and label")
    ax.set_ylabel("outputs right against gold (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    figure.savefig(path, format="png", dpi=100)
