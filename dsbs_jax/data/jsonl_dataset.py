"""A user's own dataset as JSON-lines files with fields of their naming, read without TFDS.

`manual_dir/{name}/{train,validation,test}.jsonl` hold one JSON object per row. A missing
file is a missing split (at least one must be there); without `validation.jsonl`,
validation is held out of train as for the paper's datasets (`release.hold_out`). A row's
id is its `id_field` (default `id`), or its line number when it has none, exactly as
`dsbs-annotate` numbers JSONL input with the same `--id_field`, so that its annotations join.

A row's teacher side (rationale, label, raw output) comes from, in this order:
(a) `teacher_output_field`: the teacher's raw chain-of-thought text, parsed by the
    dataset's registered answer format (`teacher_outputs`);
(b) `rationale_field`, with `teacher_label_field`: a rationale made elsewhere. Without a
    teacher label field the teacher label is the gold one, so the `_llm` tasks equal the
    `_gt` ones. The raw output stays empty;
(c) with neither field configured: `annotations_{split}.jsonl` next to the rows, as
    `dsbs-annotate --input jsonl:... --output_dir manual_dir/{name}` writes it, joined by id.
A row whose field is absent or null, or that has no annotation, is kept unparsed: the
summary counts it and only the `_gt` label tasks train on it.

Unlike the inference readers, a bad line stops the build (`ReleaseError` naming FILE:LINE
and what was expected): a training set must not lose rows silently.
"""

import dataclasses
from collections.abc import Sequence

from etils import epath

from dsbs_jax import jsonl
from dsbs_jax.data import annotations, datasets, release, teacher_outputs

# What the join reads of a row dsbs-annotate writes.
ANNOTATION_KEYS = annotations.ROW_KEYS | annotations.TEACHER_KEYS
_UNPARSED = {
    "teacher_output": "",
    "teacher_rationale": "",
    "teacher_label": "",
    "teacher_parsed": False,
}


@dataclasses.dataclass(frozen=True)
class JsonlLayout:
    """Which fields of a dataset's rows hold what (the module doc says where the teacher's
    side comes from)."""

    name: str
    input_field: str
    label_field: str
    id_field: str | None = "id"
    rationale_field: str | None = None
    teacher_label_field: str | None = None
    teacher_output_field: str | None = None

    def __post_init__(self):
        datasets.check_name(self.name)
        if self.teacher_label_field and not self.rationale_field:
            raise ValueError(
                f"{self.name}: teacher_label_field {self.teacher_label_field!r} needs a "
                "rationale_field (the rationale that label goes with)"
            )

    @property
    def from_annotations(self) -> bool:
        """Whether the teacher's side comes from `dsbs-annotate`'s files (source (c))."""
        return not (self.teacher_output_field or self.rationale_field)


def rows_file(split: str) -> str:
    return f"{split}.jsonl"


def declaration(
    layout: JsonlLayout,
    answer_format: teacher_outputs.AnswerFormat,
    label_metrics: Sequence[datasets.MetricFn],
) -> datasets.Dataset:
    """The dataset `layout` reads (its builder reads the rows; the declaration's fields say
    what dsbs-prepare's table and the teacher's votes read): labels compared as stripped
    text."""
    return datasets.Dataset(
        name=layout.name,
        fields=(layout.input_field, layout.label_field),
        build_input=datasets.Field(layout.input_field),
        build_label=datasets.Field(layout.label_field),
        id_field=layout.id_field,
        answer_format=answer_format,
        label_metrics=tuple(label_metrics),
    )


def _optional_text(record: dict, field: str | None) -> str | None:
    """`record[field]`, which may be absent or null (None) but otherwise must be text."""
    if field is None or record.get(field) is None:
        return None
    return jsonl.string_field(record, field)


def _own_teacher_side(layout: JsonlLayout, record: dict, label: str) -> dict:
    """The teacher features from the row's own fields, sources (a) then (b); {} for none."""
    raw = _optional_text(record, layout.teacher_output_field)
    if raw is not None:
        parsed = teacher_outputs.parse(layout.name, raw)
        return {
            "teacher_output": raw,
            "teacher_rationale": parsed.rationale,
            "teacher_label": parsed.label,
            "teacher_parsed": parsed.parsed,
        }
    rationale = _optional_text(record, layout.rationale_field)
    teacher_label = (
        _optional_text(record, layout.teacher_label_field) if layout.teacher_label_field else label
    )
    if rationale and teacher_label:
        return {
            "teacher_rationale": rationale,
            "teacher_label": teacher_label,
            "teacher_parsed": True,
        }
    return {}


def _stop_on(problems: Sequence[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more bad lines)" if len(problems) > 1 else ""
        raise release.ReleaseError(problems[0] + more)


def read_rows(path: epath.Path, layout: JsonlLayout) -> list[release.Example]:
    """The examples of one rows file, with their teacher side from sources (a) and (b)."""

    def example(record: dict, number: int) -> release.Example:
        label = jsonl.string_field(record, layout.label_field)
        return release.Example(
            id=str(jsonl.record_id(record, layout.id_field, number)),
            input=jsonl.string_field(record, layout.input_field),
            label=label,
            **(_UNPARSED | _own_teacher_side(layout, record, label)),
        )

    try:
        examples, problems = jsonl.read_examples(str(path), example, lambda e: e.id)
    except OSError as error:
        raise release.ReleaseError(f"{path}: cannot read it ({error.strerror})") from error
    _stop_on(problems)
    return examples


def _annotation(record: dict, number: int) -> tuple[int, dict]:
    if missing := sorted(ANNOTATION_KEYS - record.keys()):
        expected = ", ".join(sorted(ANNOTATION_KEYS))
        raise ValueError(f"no {missing[0]!r} (expected a row dsbs-annotate writes: {expected})")
    rationale, label, kept = record["rationale"], record["label"], record["kept"]
    if rationale is not None and not (
        isinstance(rationale, str) and isinstance(label, str) and isinstance(kept, list) and kept
    ):
        raise ValueError(
            "a rationale without its label or kept output (expected 'rationale' and 'label' "
            "strings and a non-empty 'kept' list, or a null 'rationale')"
        )
    return number, record


def read_annotations(path: epath.Path) -> dict[str, list[tuple[int, dict]]]:
    """dsbs-annotate's rows of one split by id (as text), each with its line, in file order.

    An id may have several rows: dsbs-annotate keeps the rows of other teachers, prompts
    and earlier versions of the input after its latest run's own."""
    rows, problems = jsonl.read_examples(str(path), _annotation, lambda pair: pair[0])
    _stop_on(problems)
    by_id: dict[str, list[tuple[int, dict]]] = {}
    for number, row in rows:
        by_id.setdefault(str(row["id"]), []).append((number, row))
    return by_id


def join_annotations(
    examples: list[release.Example], rows_path: epath.Path, annotations_path: epath.Path
) -> list[release.Example]:
    """The examples with the teacher side of their annotation (source (c)).

    An example's annotation is the first row of its id whose input and gold label are the
    example's (a gold label of null: annotated without `--label_field`), which is the
    latest run's. An id whose rows all have another input or gold label is an error: the
    annotations belong to another version of the rows file. So is a file of annotations
    none of whose ids is a row's: they were numbered another way (another `--id_field`)."""
    by_id = read_annotations(annotations_path)
    if by_id and examples and not by_id.keys() & {example.id for example in examples}:
        raise release.ReleaseError(
            f"{annotations_path}: none of its ids (such as {next(iter(by_id))!r}) is a row's "
            f"id in {rows_path} (such as {examples[0].id!r}): expected dsbs-annotate run with "
            "the id field the dataset declares (--id_field, default 'id', else line numbers)"
        )
    joined = []
    for example in examples:
        rows = by_id.get(example.id, [])
        match = next(
            (
                row
                for _, row in rows
                if row["input"] == example.input and row["gold"] in (example.label, None)
            ),
            None,
        )
        if rows and match is None:
            number, row = rows[0]
            what = "input" if row["input"] != example.input else f"gold label {row['gold']!r}"
            raise release.ReleaseError(
                f"{annotations_path}:{number}: id {example.id!r} was annotated with another "
                f"{what} than its row in {rows_path} (expected input {example.input!r} and "
                f"gold label {example.label!r}): the annotations belong to another version of "
                "that file; annotate it again with dsbs-annotate"
            )
        if match is not None and match["rationale"] is not None:
            example = dataclasses.replace(
                example,
                teacher_output=annotations.release_output(match),
                teacher_rationale=match["rationale"],
                teacher_label=match["label"],
                teacher_parsed=True,
            )
        joined.append(example)
    return joined


def _read_split(folder: epath.Path, split: str, layout: JsonlLayout) -> list[release.Example]:
    path = folder / rows_file(split)
    examples = read_rows(path, layout)
    annotated = folder / annotations.annotations_file(split)
    if layout.from_annotations and annotated.is_file():
        examples = join_annotations(examples, path, annotated)
    return examples


def read_dataset(
    manual_dir: epath.PathLike, layout: JsonlLayout
) -> dict[str, list[release.Example]]:
    """The splits of `layout`'s dataset present in `manual_dir/{name}/` (at least one must
    be); validation held out of train when it has no file of its own."""
    folder = epath.Path(manual_dir) / layout.name
    if layout.teacher_output_field:
        try:
            teacher_outputs.answer_format(layout.name)
        except ValueError as error:
            raise release.ReleaseError(
                f"{layout.name}: {error} (it parses the raw outputs of field "
                f"{layout.teacher_output_field!r})"
            ) from None
    read = {
        split: _read_split(folder, split, layout)
        for split in release.SPLITS
        if (folder / rows_file(split)).is_file()
    }
    if not read:
        expected = ", ".join(rows_file(split) for split in release.SPLITS)
        raise release.ReleaseError(f"no {layout.name} split in {folder}: expected {expected}")
    if "train" in read and "validation" not in read:
        read["train"], read["validation"] = release.hold_out(read["train"])
    return {split: read[split] for split in release.SPLITS if split in read}
