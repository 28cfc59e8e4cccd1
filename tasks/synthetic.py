"""The embedded default: generated arithmetic word problems with a rule-based teacher.

It has its own small SentencePiece vocabulary, trained from the generated text by
`dsbs-prepare --dataset synthetic` and kept next to its TFDS data.
"""

from dsbs_jax.data import metrics
from dsbs_jax.data.builders import DsbsSynthetic
from tasks.spec import OWN_VOCABULARY, DatasetTasks

TASKS = DatasetTasks(
    "synthetic",
    label_metrics=[metrics.accuracy],
    vocabulary=OWN_VOCABULARY,
    tfds_version=str(DsbsSynthetic.VERSION),
)
