"""What a dataset needs to become SeqIO tasks: its name, its label metrics, its vocabulary."""

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence

from dsbs_jax.data import teacher_outputs
from dsbs_jax.data.builders.base import ReleaseBuilder

MetricFn = Callable[[Sequence[str], Sequence[str]], dict]

T5_VOCABULARY = "t5"
OWN_VOCABULARY = "own"


@dataclasses.dataclass(frozen=True)
class DatasetTasks:
    """One dataset's tasks. `tfds_name` defaults to `dsbs_{name}` (its builder's name) and
    `answer_phrase` to the marker of its teacher answer format (`teacher_outputs`)."""

    name: str
    label_metrics: Sequence[MetricFn]
    vocabulary: str = T5_VOCABULARY
    answer_phrase: str = ""
    tfds_name: str = ""
    tfds_version: str = str(ReleaseBuilder.VERSION)

    def vocabulary_file(self, data_dir: str | pathlib.Path, shared_path: str) -> str:
        """The shared (T5) SentencePiece model, or the dataset's own next to its TFDS data."""
        if self.vocabulary == OWN_VOCABULARY:
            return os.path.join(str(data_dir), self.tfds_name, "sentencepiece.model")
        return shared_path

    def __post_init__(self):
        if not self.tfds_name:
            object.__setattr__(self, "tfds_name", f"dsbs_{self.name}")
        if not self.answer_phrase:
            object.__setattr__(self, "answer_phrase", teacher_outputs.answer_phrase(self.name))
