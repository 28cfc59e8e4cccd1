"""e-SNLI: natural language inference; labels entailment, neutral, contradiction."""

from dsbs_jax.data import metrics
from tasks.spec import DatasetTasks

TASKS = DatasetTasks("esnli", label_metrics=[metrics.nli_metrics])
