"""The SeqIO data source of a dsbs dataset: its TFDS splits, with the training split
restricted to the examples every method trains on."""

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from dsbs_jax import files
from dsbs_jax.data.preprocessors import keep_parsed

_HASH_BUCKETS = 2**30


class DsbsSource(seqio.TfdsDataSource):
    """A TFDS source whose `train` split keeps only examples with a parsed teacher output,
    subsampled to `train_fraction` by a keyed hash of the example id, and whose other splits
    carry the gold label as `teacher_label`, so that every task is evaluated against gold.

    Filtering here, rather than in each task, gives every task of a dataset (label,
    rationale, chain of thought; gold or teacher labels) the same training examples, so
    methods compare on equal data and label/rationale batches can be paired. The hash
    depends only on the id and `subsample_seed`: the subset is the same on every host and
    in every run with that seed, whatever the read order.
    """

    def __init__(
        self,
        tfds_name: str,
        tfds_data_dir: str | None = None,
        train_fraction: float = 1.0,
        subsample_seed: int = 0,
    ):
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        super().__init__(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir)
        self.train_fraction = train_fraction
        self.subsample_seed = subsample_seed

    def in_subsample(self, example_id: tf.Tensor) -> tf.Tensor:
        bucket = tf.strings.to_hash_bucket_strong(
            example_id, _HASH_BUCKETS, key=[self.subsample_seed, 0x5EED]
        )
        return bucket < int(self.train_fraction * _HASH_BUCKETS)

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        **kwargs,
    ) -> tf.data.Dataset:
        """The split, or one host's even part of it (`shard_info`), filtered as above.

        A host reads an even sub-split (TFDS's `even_splits`) rather than a share of the
        files: these datasets are small and often one file per split.
        """
        read = split
        if shard_info is not None:
            read = tfds.even_splits(split, n=shard_info.num_shards)[shard_info.index]
        dataset = super().get_dataset(read, shuffle, seed, None, **kwargs)
        if split != "train":
            # Evaluation scores against gold: a `_llm` task's targets are gold labels here.
            return dataset.map(lambda example: {**example, "teacher_label": example["label"]})
        dataset = keep_parsed(dataset)
        if self.train_fraction < 1.0:
            dataset = dataset.filter(lambda example: self.in_subsample(example["id"]))
        return dataset


def subsample(task_name: str) -> tuple[float, int]:
    """The training subsample a registered task reads: its train fraction and subsample
    seed (1.0 and 0 for a source that does not subsample)."""
    source = seqio.get_mixture_or_task(task_name).source
    return getattr(source, "train_fraction", 1.0), getattr(source, "subsample_seed", 0)


# What a prepared TFDS folder says of its content (not its TFRecords: their bytes differ
# between two builds of the same rows). Ours hold a digest of every example in metadata.json.
DESCRIPTIONS = ("dataset_info.json", "features.json", "metadata.json")


def dataset_fingerprint(task_name: str) -> str | None:
    """A fingerprint (`files.fingerprint`) of the prepared TFDS datasets that a task or mixture
    reads, for the results it makes to record: data prepared otherwise is told apart, the
    same data prepared again is not. None for tasks that read no TFDS dataset."""
    folders = {
        epath.Path(task.source.tfds_dataset.builder.data_dir)
        for task in seqio.get_subtasks(seqio.get_mixture_or_task(task_name))
        if isinstance(task.source, seqio.TfdsDataSource)
    }
    found = [folder / name for folder in sorted(folders) for name in DESCRIPTIONS]
    return files.fingerprint(*found) if folders else None  # a missing file adds nothing
