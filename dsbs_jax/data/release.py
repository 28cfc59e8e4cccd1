"""Reading one dataset as the paper's release lays it out, from a TFDS-style manual dir.

`manual_dir/{name}/{name}_{train,valid,test}.json` hold the gold rows (JSON lines) and
`manual_dir/{name}/llm/{split}_CoT_{k}.json` the teacher's raw outputs for them (JSON
arrays, in row order across k). Inputs, labels, parsing and the validation hold-out follow
the reference code (google-research/distilling-step-by-step), so the figures it reports
reproduce. Our split names are train / validation / test; the release's train / valid /
test.
"""

import dataclasses
import json
import math
import re
from collections.abc import Sequence

import numpy as np
from etils import epath

from dsbs_jax.data import teacher_outputs
from dsbs_jax.data.datasets import SPLITS, Dataset, get

# The reference holds out validation with Hugging Face datasets'
# `train_test_split(test_size=0.1, seed=0)` where the release has none.
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0


class ReleaseError(Exception):
    """The release files are missing, malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Example:
    """A gold row with its teacher output; the teacher's rationale and label are empty when
    the output did not parse (`teacher_parsed` False)."""

    id: str
    input: str
    label: str
    teacher_output: str
    teacher_rationale: str
    teacher_label: str
    teacher_parsed: bool


def _text(path: epath.Path) -> str:
    """A release file's text, which must be UTF-8 (the paper's files are)."""
    data = epath.Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ReleaseError(
            f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#x} at offset "
            f"{error.start}); save the file as UTF-8"
        ) from None


def read_rows(path: epath.Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per line."""
    rows = []
    lines = _text(path).split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ReleaseError(f"{path}, line {number}: not JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise ReleaseError(f"{path}, line {number}: expected a JSON object")
        rows.append(row)
    return rows


def teacher_chunk_files(llm_dir: epath.Path, split: str) -> list[epath.Path]:
    """`{split}_CoT_{k}.json` in `llm_dir` (split as on disk: train, valid, test), in order
    of k as a number. A missing k between two present ones is an error: the outputs after
    it would be matched to the wrong rows."""
    name = re.compile(rf"{re.escape(split)}_CoT_(\d+)\.json")
    numbered = {}
    for path in epath.Path(llm_dir).glob(f"{split}_CoT_*.json"):
        if match := name.fullmatch(path.name):
            numbered[int(match.group(1))] = path
    if missing := sorted(set(range(max(numbered, default=-1) + 1)) - set(numbered)):
        raise ReleaseError(
            f"{llm_dir}: no {split}_CoT_{missing[0]}.json among {len(numbered)} chunks"
        )
    return [numbered[k] for k in sorted(numbered)]


def _read_chunk(path: epath.Path) -> list[str]:
    try:
        outputs = json.loads(_text(path))
    except json.JSONDecodeError as error:
        raise ReleaseError(f"{path}, line {error.lineno}: not JSON ({error.msg})") from error
    if not isinstance(outputs, list):
        raise ReleaseError(f"{path}: expected a JSON array of strings")
    for index, output in enumerate(outputs):
        if not isinstance(output, str):
            raise ReleaseError(
                f"{path}, entry {index}: expected a string, got {type(output).__name__}"
            )
    return outputs


def read_teacher_outputs(llm_dir: epath.Path, split: str) -> list[str]:
    """The raw outputs of all of `split`'s chunks, concatenated in chunk order."""
    return [output for path in teacher_chunk_files(llm_dir, split) for output in _read_chunk(path)]


def _example(spec: Dataset, row: dict, row_id: str, raw: str) -> Example:
    model_input, label = spec.build_input(row), spec.build_label(row)
    if not (isinstance(model_input, str) and isinstance(label, str)):
        kinds = f"{type(model_input).__name__} and {type(label).__name__}"
        raise TypeError(f"the input and label must be text, got {kinds}")
    parsed = teacher_outputs.parse_with(spec.answer_format, raw)
    return Example(
        id=row_id,
        input=model_input,
        label=label,
        teacher_output=raw,
        teacher_rationale=parsed.rationale,
        teacher_label=parsed.label,
        teacher_parsed=parsed.parsed,
    )


def _examples(spec: Dataset, path: epath.Path, release_split: str) -> list[Example]:
    rows = read_rows(path)
    outputs = read_teacher_outputs(path.parent / "llm", release_split)
    if len(outputs) != len(rows):
        raise ReleaseError(
            f"{spec.name} {release_split} split: {len(rows)} rows in {path.name} but "
            f"{len(outputs)} teacher outputs in llm/{release_split}_CoT_*.json"
        )
    examples = []
    for index, (row, raw) in enumerate(zip(rows, outputs, strict=True)):
        if absent := [field for field in spec.fields if field not in row]:
            raise ReleaseError(
                f"{path}, line {index + 1}: no field {absent[0]!r}; expected {spec.fields}"
            )
        row_id = (
            str(row[spec.id_field]) if spec.id_field else f"{spec.name}-{release_split}-{index}"
        )
        try:
            examples.append(_example(spec, row, row_id, raw))
        except (ValueError, TypeError) as error:
            raise ReleaseError(f"{path}, line {index + 1}: {error}") from error
    return examples


def holdout_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices, as `datasets.Dataset.train_test_split(test_size=0.1,
    seed=0)` makes them: validation the first ceil(0.1 n) of a seeded permutation, train
    the rest, each in permutation order."""
    permutation = np.random.default_rng(HOLDOUT_SEED).permutation(n)
    n_validation = math.ceil(HOLDOUT_FRACTION * n)
    return permutation[n_validation:], permutation[:n_validation]


def hold_out(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(train, validation) out of the examples of a dataset without a validation file."""
    train, validation = holdout_indices(len(examples))
    return [examples[i] for i in train], [examples[i] for i in validation]


def _release_split_examples(
    manual_dir: epath.Path, spec: Dataset, release_split: str
) -> list[Example] | None:
    path = epath.Path(manual_dir) / spec.name / spec.rows_file(release_split)
    return _examples(spec, path, release_split) if path.is_file() else None


def _our_split(spec: Dataset, split: str, examples: list[Example]) -> list[Example]:
    """`split` out of the examples of the release split that holds it."""
    if spec.has_validation or split == "test":
        return examples
    train, validation = hold_out(examples)
    return validation if split == "validation" else train


def read_split(manual_dir: epath.Path, dataset: str, split: str) -> list[Example] | None:
    """Our `split` of `dataset`, or None when the release file that holds it is absent."""
    spec = get(dataset)
    examples = _release_split_examples(manual_dir, spec, spec.release_split(split))
    return None if examples is None else _our_split(spec, split, examples)


def read_dataset(manual_dir: epath.Path, dataset: str) -> dict[str, list[Example]]:
    """The splits of `dataset` present in `manual_dir` (each release file read once); at
    least one must be."""
    spec = get(dataset)
    release_splits = sorted({spec.release_split(split) for split in SPLITS})
    read = {name: _release_split_examples(manual_dir, spec, name) for name in release_splits}
    present = {
        split: _our_split(spec, split, read[spec.release_split(split)])
        for split in SPLITS
        if read[spec.release_split(split)] is not None
    }
    if not present:
        expected = [spec.rows_file(name) for name in release_splits]
        directory = epath.Path(manual_dir) / dataset
        raise ReleaseError(f"no {dataset} split in {directory}: expected {expected}")
    return present


def split_summary(examples: Sequence[Example], dataset: str) -> dict[str, float]:
    """Rows, unparsed teacher outputs, and the teacher's labels scored against the gold
    ones by the dataset's rule (unparsed outputs count as wrong); accuracy as a fraction."""
    matches = get(dataset).label_matches
    correct = sum(e.teacher_parsed and matches(e.label, e.teacher_label) for e in examples)
    return {
        "rows": len(examples),
        "parse_failures": sum(not e.teacher_parsed for e in examples),
        "teacher_correct": correct,
        "teacher_accuracy": correct / len(examples) if examples else float("nan"),
    }
