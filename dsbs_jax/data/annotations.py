"""The files dsbs-annotate writes, as its readers (resumption, the JSONL builder) see them.

`annotations_{split}.jsonl` holds one row per annotated example: its id, input and gold
label, a fingerprint of the teacher, prompt and samples, the raw outputs, their parsed
labels, the vote, the kept outputs and the rationale and label chosen.
The format lives with the data, which reads it (the JSONL builder); the teacher that
writes it imports it from here, so the teacher sits above the data and never below it.
"""

# The keys every row has, whatever became of its outputs.
ROW_KEYS = frozenset({"id", "fingerprint", "input", "gold", "outputs"})
# What a row's teacher side is read from: `rationale` is null when no output was kept.
TEACHER_KEYS = frozenset({"kept", "rationale", "label"})


def annotations_file(split: str) -> str:
    """One annotations file per split: the ids of different splits may coincide (line numbers)."""
    return f"annotations_{split}.jsonl"


def manifest_file(split: str) -> str:
    return f"manifest_{split}.json"


def release_output(row: dict) -> str:
    """What the release's llm files hold for a row: its first kept raw output, or ""."""
    return row["outputs"][row["kept"][0]] if row["kept"] else ""
