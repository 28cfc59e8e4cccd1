"""SeqIO tasks and mixtures for distilling step-by-step, derived from the declared datasets.

`import tasks` registers, for every dataset in `dsbs_jax.data.datasets.DATASETS`:
`dsbs_{ds}_label_{gt|llm}`, `dsbs_{ds}_rationale`, `dsbs_{ds}_cot_{gt|llm}`, and the
mixtures `dsbs_label_{gt|llm}` and `dsbs_rationale`. Defaults: TFDS's data dir and T5's
SentencePiece model; `tasks.register(data_dir=..., vocabulary_path=...)` re-registers.
"""

from tasks.naming import mixture_name, task_name
from tasks.registry import register, register_dataset

__all__ = ["mixture_name", "register", "register_dataset", "task_name"]

register()
