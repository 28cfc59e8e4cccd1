"""A user's dataset from JSONL files in a few lines, without writing a TFDS builder:

    # my_tasks.py (on PYTHONPATH; --task_module / TASK_MODULES name it)
    from tasks.jsonl import jsonl_dataset

    TASKS = jsonl_dataset("tickets", input_field="text", label_field="category",
                          rationale_field="why")

The rows are `manual_dir/tickets/{train,validation,test}.jsonl`; which fields hold the
teacher's side, and what happens without any, is in `dsbs_jax/data/jsonl_dataset.py`.
"""

from collections.abc import Sequence

from dsbs_jax.data import datasets, metrics, teacher_outputs
from dsbs_jax.data.builders.jsonl import make_builder
from dsbs_jax.data.jsonl_dataset import JsonlLayout, declaration


def _answer_format(
    name: str, answer_format: teacher_outputs.AnswerFormat | None, teacher_output_field: str | None
) -> teacher_outputs.AnswerFormat:
    """The given format, or the one a prompt file gave the dataset, or the default; raw
    teacher outputs are not parsed by a guessed format."""
    if answer_format is not None:
        return answer_format
    if name in teacher_outputs.ANSWER_FORMATS:
        return teacher_outputs.ANSWER_FORMATS[name]
    if teacher_output_field:
        raise ValueError(
            f"{name}: teacher_output_field {teacher_output_field!r} needs an answer_format "
            "(how the raw outputs state their answer; teacher_outputs.AnswerFormat)"
        )
    return teacher_outputs.DEFAULT_ANSWER_FORMAT


def jsonl_dataset(
    name: str,
    input_field: str,
    label_field: str,
    *,
    id_field: str | None = "id",
    rationale_field: str | None = None,
    teacher_label_field: str | None = None,
    teacher_output_field: str | None = None,
    answer_format: teacher_outputs.AnswerFormat | None = None,
    label_metrics: Sequence[datasets.MetricFn] = (metrics.accuracy,),
) -> datasets.Dataset:
    """Declare the JSONL dataset `name` (`datasets.declare`), with its TFDS builder
    `dsbs_{name}` for dsbs-prepare; `registry.register` then registers its tasks
    `dsbs_{name}_*`, which share T5's vocabulary (the VOCABULARY binding). Calling it again
    with the same arguments is harmless; other fields under a taken name are a ValueError."""
    layout = JsonlLayout(
        name,
        input_field,
        label_field,
        id_field=id_field,
        rationale_field=rationale_field,
        teacher_label_field=teacher_label_field,
        teacher_output_field=teacher_output_field,
    )
    fmt = _answer_format(name, answer_format, teacher_output_field)
    make_builder(layout)
    return datasets.declare(declaration(layout, fmt, label_metrics))
