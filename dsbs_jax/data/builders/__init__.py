"""TFDS builders `dsbs_{name}`, one per declared dataset (`datasets.DATASETS`): `builder(name)`."""

import types

import tensorflow_datasets as tfds
from etils import epath

from dsbs_jax.data import datasets, synthetic
from dsbs_jax.data.builders.base import ReleaseBuilder


class DsbsSynthetic(ReleaseBuilder, skip_registration=True):
    """Generated word problems and a rule-based teacher: needs no manual dir."""

    name = "dsbs_synthetic"
    dataset = "synthetic"
    VERSION = tfds.core.Version(datasets.get("synthetic").version)
    MANUAL_DOWNLOAD_INSTRUCTIONS = None
    RELEASE_NOTES = {
        "1.0.0": "2,000 training problems of 2 to 4 steps, counts up to 150.",
        "1.1.0": "10,000 training problems of 1 or 2 steps, counts up to 60: learnable in "
        "the quickstart's few CPU minutes.",
    }

    def release_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        directory = epath.Path(dl_manager.download_dir) / "synthetic_release"
        synthetic.write_release(directory)
        return directory


# Builders that read otherwise than the release layout: the synthetic one, and the JSONL
# datasets' (`builders.jsonl.make_builder`). Every other declared dataset's is derived.
BUILDERS: dict[str, type[ReleaseBuilder]] = {"synthetic": DsbsSynthetic}


def builder(name: str) -> type[ReleaseBuilder]:
    """The TFDS builder class of the declared dataset `name` (made once, then kept)."""
    dataset = datasets.get(name)
    if name not in BUILDERS:
        BUILDERS[name] = new_builder(
            ReleaseBuilder, name, VERSION=tfds.core.Version(dataset.version)
        )
    return BUILDERS[name]


def new_builder(base: type[ReleaseBuilder], name: str, **attributes) -> type[ReleaseBuilder]:
    """A subclass of `base` that builds `dsbs_{name}`. Not in TFDS's registry (a class per
    call would clash there): TFDS reads the prepared data from the data dir by name."""
    attributes = {
        "name": f"dsbs_{name}",
        "dataset": name,
        "__module__": __name__,  # TFDS finds a builder's package by it
        **attributes,
    }
    return types.new_class(
        "Dsbs" + name.title().replace("_", ""),
        (base,),
        {"skip_registration": True},
        lambda namespace: namespace.update(attributes),
    )
