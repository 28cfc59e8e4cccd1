"""The data side: the paper's release layout, teacher-output parsing, TFDS builders,
paired label/rationale batches and metrics. TensorFlow, TFDS and SeqIO live here only.

Modules:
  datasets.py         every dataset declared once; builders, answer formats, tasks derive
  release.py          read a dataset in the paper's release layout (a TFDS manual dir)
  teacher_outputs.py  split a teacher's raw chain-of-thought into rationale and label
  metrics.py          accuracy, SVAMP equation accuracy, NLI per-class, ROUGE-L
  synthetic.py        the embedded default: generated word problems and a rule-based teacher
  builders/           TFDS builders (`dsbs_cqa`, `dsbs_svamp`, ...)
  pairing.py          per-step label and rationale batches from the same examples
"""

from dsbs_jax.data import datasets  # noqa: F401  the declarations, wherever data is used
