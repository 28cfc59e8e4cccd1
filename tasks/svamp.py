"""SVAMP: arithmetic word problems; the label is an equation, scored by its value."""

from dsbs_jax.data import metrics
from tasks.spec import DatasetTasks

TASKS = DatasetTasks("svamp", label_metrics=[metrics.equation_accuracy])
