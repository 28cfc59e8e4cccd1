"""ANLI round 1: adversarial natural language inference, scored like e-SNLI."""

from dsbs_jax.data import metrics
from tasks.spec import DatasetTasks

TASKS = DatasetTasks("anli1", label_metrics=[metrics.nli_metrics])
