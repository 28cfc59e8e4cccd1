"""CommonsenseQA: a five-way multiple choice; the label is the chosen answer's text."""

from dsbs_jax.data import metrics
from tasks.spec import DatasetTasks

TASKS = DatasetTasks("cqa", label_metrics=[metrics.accuracy])
