"""JSON-lines files that people write by hand and binaries append to, read forgivingly.

`dsbs-infer` and `dsbs-annotate` both read a JSONL file of examples where one bad line must
not cost the rest: each line is parsed on its own, a bad one is named `FILE:LINE: what is
wrong (expected ...)` and skipped. Both append their results a batch at a time, flushed, so
a killed run loses at most a partial last line (`files.complete_lines` drops it on resume).
"""

import json
from collections.abc import Callable, Hashable
from typing import IO, TypeVar

from etils import epath

Example = TypeVar("Example")
Id = str | int


def json_type(value: object) -> str:
    """What a parsed JSON value is, in JSON's words."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "null" if value is None else "a number")


def string_field(record: dict, field: str) -> str:
    """`record[field]`, which must be there and be text."""
    if field not in record:
        raise ValueError(f"no field {field!r} (expected the text in it)")
    if not isinstance(record[field], str):
        raise ValueError(f"field {field!r} is {json_type(record[field])} (expected a string)")
    return record[field]


def record_id(record: dict, id_field: str | None, number: int) -> Id:
    """A row's id: its `id_field`, or its line number when it has none."""
    value = record.get(id_field, number) if id_field else number
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{id_field!r} is {json_type(value)} (expected a string or integer)")
    return value


def read_examples(
    path: str,
    make: Callable[[dict, int], Example],
    id_of: Callable[[Example], Hashable],
) -> tuple[list[Example], list[str]]:
    """`make(record, line_number)` for every JSON-object line of `path` (blank lines
    ignored), and a `FILE:LINE: problem` for each line skipped: not JSON, not an object,
    `make`'s ValueError, or an id seen before. Raises OSError if the file cannot be read."""
    examples, problems, seen = [], [], set()
    for number, line in enumerate(epath.Path(path).read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            example = make(_object(line), number)
            if id_of(example) in seen:
                raise ValueError(f"duplicate id {id_of(example)!r} (expected each id once)")
        except ValueError as error:
            problems.append(f"{path}:{number}: {error}")
            continue
        seen.add(id_of(example))
        examples.append(example)
    return examples, problems


def _object(line: bytes) -> dict:
    try:
        record = json.loads(line)
    except ValueError:
        raise ValueError("not valid JSON (expected one JSON object per line)") from None
    if not isinstance(record, dict):
        raise ValueError(f"{json_type(record)} (expected a JSON object)")
    return record


def append_rows(stream: IO[bytes], rows: list[dict]) -> None:
    """Append rows as JSON lines and flush, so a reader sees each batch as it lands."""
    stream.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())
    stream.flush()
