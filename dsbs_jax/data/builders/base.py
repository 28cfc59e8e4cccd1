"""A TFDS builder for one dataset in the paper's release layout (TFDS's manual-dir setup).

Every dataset yields the same features, so that one set of SeqIO preprocessors serves all:
`id`, `input` (the model input as the reference formats it), `label` (gold),
`teacher_label`, `teacher_rationale`, `teacher_output` (raw) and `teacher_parsed`. A split
whose files are absent from the manual dir is skipped with a warning. The prepared folder's
`metadata.json` holds a digest of every example (`EXAMPLES_DIGEST`), which results record
(`sources.dataset_fingerprint`): the TFRecords' bytes differ between two builds of the same
rows, as protobuf writes a record's features in no fixed order.
"""

import abc
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from dsbs_jax import progress
from dsbs_jax.data import release

log = logging.getLogger(__name__)

EXAMPLES_DIGEST = "examples_sha256"

FEATURES = tfds.features.FeaturesDict(
    {
        "id": tfds.features.Text(),
        "input": tfds.features.Text(),
        "label": tfds.features.Text(),
        "teacher_label": tfds.features.Text(),
        "teacher_rationale": tfds.features.Text(),
        "teacher_output": tfds.features.Text(),
        "teacher_parsed": tfds.features.Scalar(dtype=np.bool_),
    }
)


class ReleaseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds `dsbs_{dataset}` from `manual_dir/{dataset}/` as the paper's release lays it out."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The paper's released data with parsed teacher outputs."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass --manual_dir: the folder that holds cqa/, svamp/, esnli/, anli1/ as in the "
        "Distilling Step-by-Step release (datasets.zip of google-research/distilling-step-by-step)."
    )

    @property
    @abc.abstractmethod
    def dataset(self) -> str:
        """The dataset's name in the release layout and in `datasets.DATASETS`."""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=FEATURES,
            supervised_keys=("input", "label"),
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/google-research/distilling-step-by-step",
        )

    def release_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        return epath.Path(dl_manager.manual_dir)

    def read(self, manual_dir: epath.Path) -> dict[str, list[release.Example]]:
        """The splits present in the manual dir; a builder for another layout overrides it."""
        return release.read_dataset(manual_dir, self.dataset)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = self.release_dir(dl_manager)
        splits = self.read(manual_dir)
        self.info.metadata[EXAMPLES_DIGEST] = examples_digest(splits)
        for split in release.SPLITS:
            if split not in splits:
                log.warning("%s: no %s split in %s; skipped", self.name, split, manual_dir)
        return {split: self._generate_examples(rows, split) for split, rows in splits.items()}

    def _generate_examples(
        self, examples: list[release.Example], split: str
    ) -> Iterator[tuple[str, dict]]:
        counter = progress.Counter(len(examples), label=f"{self.name} {split}")
        for done, example in enumerate(examples, 1):
            counter.update(done)
            yield (
                example.id,
                {
                    "id": example.id,
                    "input": example.input,
                    "label": example.label,
                    "teacher_label": example.teacher_label,
                    "teacher_rationale": example.teacher_rationale,
                    "teacher_output": example.teacher_output,
                    "teacher_parsed": example.teacher_parsed,
                },
            )


def examples_digest(splits: Mapping[str, Sequence[release.Example]]) -> str:
    """SHA-256 of every example of every split, in order: what the prepared data holds."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        for example in splits[split]:
            row = {"split": split, **dataclasses.asdict(example)}
            digest.update(json.dumps(row, sort_keys=True).encode() + b"\n")
    return digest.hexdigest()
