"""TFDS builders for users' JSONL datasets (`jsonl_dataset`), made at run time: `dsbs_{name}`.

A user names their fields in a task module rather than writing a builder, so the builder
class is made from a `JsonlLayout` by `make_builder`, which keeps it for `dsbs-prepare`
(`BUILDERS`); `tasks.jsonl.jsonl_dataset` declares the dataset beside it.
"""

from typing import ClassVar

from etils import epath

from dsbs_jax.data import datasets, jsonl_dataset, release
from dsbs_jax.data.builders import BUILDERS, new_builder
from dsbs_jax.data.builders.base import ReleaseBuilder


class JsonlBuilder(ReleaseBuilder, skip_registration=True):
    """Builds one JSONL dataset; `make_builder` makes the subclass of each."""

    layout: ClassVar[jsonl_dataset.JsonlLayout]
    RELEASE_NOTES = {"1.0.0": "A user's JSONL rows with their teacher's rationales."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass --manual_dir: the folder that holds NAME/ with train.jsonl, validation.jsonl "
        "and test.jsonl (see dsbs_jax/data/jsonl_dataset.py)."
    )

    def read(self, manual_dir: epath.Path) -> dict[str, list[release.Example]]:
        return jsonl_dataset.read_dataset(manual_dir, self.layout)


def make_builder(layout: jsonl_dataset.JsonlLayout) -> type[JsonlBuilder]:
    """The builder of `layout`'s dataset, kept in `BUILDERS`.

    Calling it again with the same layout returns the same class; another layout under a
    taken name (a built-in dataset's or a JSONL one's) is a ValueError, so that one module
    cannot silently change what another dataset is built from."""
    existing = BUILDERS.get(layout.name)
    if layout.name in datasets.DATASETS and not (existing and issubclass(existing, JsonlBuilder)):
        raise ValueError(
            f"dataset {layout.name!r} is built in or declared otherwise: expected another name"
        )
    if existing is not None and existing.layout != layout:
        raise ValueError(
            f"dataset {layout.name!r} is already declared as {existing.layout}: expected the "
            "same fields, or another name"
        )
    if existing is None:
        BUILDERS[layout.name] = new_builder(JsonlBuilder, layout.name, layout=layout)
    return BUILDERS[layout.name]
