"""Annotating examples with a teacher: the vote over its samples, and the resumable
annotations file (`dsbs-annotate` is the command around it).

Paying a teacher for thousands of examples must survive a busy server and a killed run. So
rows are appended to the annotations file as their answers arrive (a kill loses only the
requests in flight), each with the example's id, input and gold label and a fingerprint of
(teacher, prompt, samples): a re-run skips the examples that have a row (same fingerprint,
same input), and `rewrite` leaves the file as an uninterrupted run would (its rows in input
order, then any other rows as they were). An example is written only once all its samples
were answered, so the next run asks again for those left.

Each output is parsed by the dataset's answer format and the labels vote (self-consistency;
labels compared by the dataset's rule, e.g. SVAMP equations by value): keep `vote` keeps the
outputs that agree with the majority, `gold` those that agree with the gold label (falling
back to the vote without one), `all` every parsed one.
"""

import dataclasses
import hashlib
import json
import logging
import pathlib
from collections.abc import Sequence

from dsbs_jax import cli, files, jsonl, progress
from dsbs_jax.data import datasets, teacher_outputs
from dsbs_jax.data.annotations import ROW_KEYS, release_output
from dsbs_jax.teacher import confidence
from dsbs_jax.teacher.backends import Teacher
from dsbs_jax.teacher.confidence import Tokens
from dsbs_jax.teacher.voting import Matcher, label_matcher, majority

log = logging.getLogger(__name__)
KEEP = ("vote", "gold", "all")

Id = str | int


@dataclasses.dataclass(frozen=True)
class Example:
    """One input: its id, model input, gold label (None when unknown) and the row it came
    from (JSONL input only, for the release layout)."""

    id: Id
    input: str
    gold: str | None
    row: dict | None = None


@dataclasses.dataclass(frozen=True)
class Vote:
    """How an example's outputs become its row: parsed by `dataset`'s answer format, the
    labels voting by its rule; `keep` (one of `KEEP`) says which outputs are kept, and
    `min_confidence`, when set, keeps only outputs whose answer confidence reaches it."""

    dataset: str
    keep: str = "vote"
    min_confidence: float | None = None

    def row(
        self,
        example: Example,
        outputs: Sequence[str],
        fingerprint: str,
        tokens: Sequence[Tokens | None] | None = None,
    ) -> dict:
        """The row for one example's outputs (every sample answered), with their tokens'
        log-probabilities and confidences when there are any (`--logprobs`)."""
        matches = label_matcher(self.dataset)
        parsed = [teacher_outputs.parse(self.dataset, raw) for raw in outputs]
        labels = [p.label if p.parsed else None for p in parsed]
        vote = majority(labels, matches)
        target = example.gold if self.keep == "gold" and example.gold is not None else vote
        fmt = teacher_outputs.answer_format(self.dataset)
        sure = [t and confidence.confidence(fmt, t) for t in tokens or [None] * len(outputs)]
        kept = [
            i
            for i, label in enumerate(labels)
            if label is not None
            and (self.keep == "all" or matches(target, label))
            and (self.min_confidence is None or _sure_enough(sure[i], self.min_confidence))
        ]
        scores = {}
        if tokens is not None:
            scores = {"logprobs": [t and t.to_json() for t in tokens], "confidence": sure}
        return {
            "id": example.id,
            "fingerprint": fingerprint,
            "input": example.input,
            "gold": example.gold,
            "outputs": list(outputs),
            "labels": labels,
            "vote": vote,
            "kept": kept,
            "rationale": parsed[kept[0]].rationale if kept else None,
            "label": target,
            **scores,
        }


def _sure_enough(score: dict | None, threshold: float) -> bool:
    """Whether an output's answer confidence reaches `threshold` (one without is not)."""
    return score is not None and score["answer"] is not None and score["answer"] >= threshold


def saved_tokens(row: dict) -> list[Tokens | None] | None:
    """The tokens a row stored (None: it has none, the run asked for none)."""
    if "logprobs" not in row:
        return None
    try:
        return [data and Tokens.from_json(data) for data in row["logprobs"]]
    except (KeyError, TypeError, ValueError):
        raise cli.UsageError(
            f"annotations of {row['id']!r}: unreadable logprobs: remove the row to ask again"
        ) from None


def fingerprint(description: dict, prompt_sha256: str, samples: int) -> str:
    """First 16 hex digits of the SHA-256 of what decides a row's outputs: teacher, prompt,
    samples. (`--keep` only reads the outputs, so rows are recomputed rather than re-asked.)"""
    key = {"teacher": description, "prompt": prompt_sha256, "samples": samples}
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def saved_rows(path: pathlib.Path) -> list[tuple[dict, bytes]]:
    """Every complete row of an annotations file with its line (a partial last line, from a
    killed write, is dropped first)."""
    lines, partial = files.complete_lines(path)
    if partial:
        log.warning("dropped the partial last line of %s (a write that was cut off)", path)
    saved = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not row.keys() >= ROW_KEYS:
                raise ValueError
        except (ValueError, AttributeError):
            raise cli.UsageError(
                f"{path}:{number}: not a row dsbs-annotate writes (expected a JSON object with "
                f"{sorted(ROW_KEYS)}); give another --output_dir or remove the file"
            ) from None
        saved.append((row, line))
    return saved


def _is_row_of(row: dict, key: str, example: Example | None) -> bool:
    """Whether `row` answers `example` under fingerprint `key`: an id alone is not enough,
    since ids may be line numbers of a file that has changed since."""
    return (
        example is not None
        and row["fingerprint"] == key
        and row["input"] == example.input
        and row["gold"] == example.gold
    )


def rows_for(saved: list[tuple[dict, bytes]], key: str, examples: list[Example]) -> dict[Id, dict]:
    """The newest saved row of each example under fingerprint `key`."""
    by_id = {example.id: example for example in examples}
    return {row["id"]: row for row, _ in saved if _is_row_of(row, key, by_id.get(row["id"]))}


def rewrite(
    path: pathlib.Path,
    examples: list[Example],
    rows: dict[Id, dict],
    saved: list[tuple[dict, bytes]],
    key: str,
) -> None:
    """The annotations file as an uninterrupted run would leave it: this run's rows in input
    order, then every other saved line as it was (other fingerprints, other inputs)."""
    by_id = {example.id: example for example in examples}
    ours = [rows[example.id] for example in examples if example.id in rows]
    rest = [line + b"\n" for row, line in saved if not _is_row_of(row, key, by_id.get(row["id"]))]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ours)
    files.write_atomically(path, text.encode() + b"".join(rest))


def write_release(
    output_dir: pathlib.Path,
    spec: datasets.Dataset,
    split: str,
    examples: list[Example],
    rows: dict[Id, dict],
) -> pathlib.Path:
    """The input rows and teacher outputs in the paper's release layout; returns the folder."""
    release_split = spec.release_split(split)
    folder = output_dir / spec.name
    lines = "".join(json.dumps(e.row, ensure_ascii=False) + "\n" for e in examples)
    files.write_atomically(folder / spec.rows_file(release_split), lines)
    outputs = [release_output(rows[example.id]) for example in examples]
    chunk = folder / "llm" / f"{release_split}_CoT_0.json"
    files.write_atomically(chunk, json.dumps(outputs, ensure_ascii=False))
    return folder


def counts(rows: list[dict]) -> dict[str, int]:
    """Figures over the annotated rows."""
    outputs = [pair for row in rows for pair in zip(row["outputs"], row["labels"], strict=True)]
    return {
        "annotated": len(rows),
        "outputs": len(outputs),
        "parse_failures": sum(label is None for _, label in outputs),
        "kept": sum(len(row["kept"]) for row in rows),
        "with_rationale": sum(row["rationale"] is not None for row in rows),
    }


def teacher_accuracy(rows: list[dict], matches: Matcher) -> dict:
    """The vote against gold (no vote counts as wrong), over the rows with a gold label."""
    scored = [row for row in rows if row["gold"] is not None]
    correct = sum(row["vote"] is not None and matches(row["gold"], row["vote"]) for row in scored)
    return {
        "correct": correct,
        "scored": len(scored),
        "accuracy": correct / len(scored) if scored else None,
    }


def annotate_pending(
    path: pathlib.Path,
    teacher: Teacher,
    key: str,
    examples: list[Example],
    rows: dict[Id, dict],
    vote: Vote,
    samples: int = 1,
    with_tokens: bool = False,
) -> int:
    """Annotate the examples without a row, appending each one's row to the output file as
    soon as its answers are in (a kill loses only the requests in flight); returns the number
    of requests that failed after all retries. An example is written only when every one of
    its samples was answered (the next run asks again for the others)."""
    pending = [example for example in examples if example.id not in rows]
    done, failures = len(examples) - len(pending), 0
    counter = progress.Counter(len(examples), initial=done)
    with open(path, "ab") as stream:
        answered = teacher.stream([example.input for example in pending], samples)
        for index, answers in answered:
            failures += answers.count(None)
            if None not in answers:
                tokens = [answer.tokens for answer in answers] if with_tokens else None
                row = vote.row(pending[index], [answer.text for answer in answers], key, tokens)
                jsonl.append_rows(stream, [row])
                rows[row["id"]] = row
                done += 1
            counter.update(done, failures=failures)
    counter.update(done, force=True, failures=failures)
    return failures
