"""Scoring a model on a split: SeqIO's `Evaluator` over our decoding.

`TaskEvaluator` decodes a task (or each task of a mixture) with whatever `decode` function
it is given, in batches of similar input length, lets SeqIO postprocess and score the
predictions with the task's metrics, and returns per-example rows (id, input, target,
prediction, parsed prediction, correct) for a predictions file. Every host reads the whole
split and decodes its share of each batch (`decode` gathers the rows back), so all hosts
see all results. `Validation` is a training run's periodic evaluation: each task's
teacher-forced loss, and the label task's metrics.
"""

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from dsbs_jax import losses, partitioning
from dsbs_jax.data import packing
from dsbs_jax.data.pairing import Lengths
from dsbs_jax.inference import BatchDecoder
from dsbs_jax.progress import Counter
from dsbs_jax.trainer import Trainer

Decode = Callable[[np.ndarray], np.ndarray]
VALIDATION = "validation"


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with zero rows appended up to `rows` (zero tokens are padding everywhere)."""
    padding = [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, padding)


def padded_batches(dataset: tf.data.Dataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-size numpy batches of a finite dataset, the last one padded with zero rows
    (zero loss weight, so padding changes no sum); `rows` says how many are real."""
    for batch in dataset.batch(batch_size).as_numpy_iterator():
        rows = len(next(iter(batch.values())))
        yield {"rows": rows, **{k: _pad_rows(v, batch_size) for k, v in batch.items()}}


def decode_by_length(
    decode: Decode, inputs: np.ndarray, batch_size: int, progress: Counter | None = None
) -> np.ndarray:
    """`decode` over `inputs` in batches of similar length (so `decode` can cut each batch's
    padding), zero rows padding the last; the outputs come back in the inputs' order."""
    order = np.argsort(-np.count_nonzero(inputs, axis=1), kind="stable")
    outputs = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        outputs.append(decode(_pad_rows(inputs[rows], batch_size))[: len(rows)])
        if progress:
            progress.update(start + len(rows))
    decoded = np.concatenate(outputs) if outputs else np.zeros((0, 0), np.int32)
    result = np.empty_like(decoded)
    result[order] = decoded
    return result


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TaskEvaluator:
    """Greedy-decode `task_name` (a task or mixture) on `split` and score it."""

    def __init__(
        self,
        task_name: str,
        split: str,
        lengths: Mapping[str, int],
        batch_size: int,
        num_examples: int | None = None,
    ):
        self.batch_size = batch_size
        self.target_length = lengths["targets"]
        # One evaluator per task, so that each task's outputs can be kept for its rows.
        self.evaluators = {
            task.name: seqio.Evaluator(
                task.name,
                seqio.EncDecFeatureConverter(pack=False),
                eval_split=split,
                sequence_length=dict(lengths),
                num_examples=num_examples,
            )
            for task in seqio.get_subtasks(seqio.get_mixture_or_task(task_name))
            if task.metric_fns and split in task.splits
        }
        if not self.evaluators:
            raise ValueError(f"{task_name} has no task with metrics and a {split!r} split")

    @property
    def task_names(self) -> list[str]:
        """The tasks scored: each task of the mixture with metrics and this split."""
        return list(self.evaluators)

    @property
    def vocab_size(self) -> int:
        """The largest target vocabulary of the tasks: a model must have at least as many ids."""
        return max(
            evaluator.eval_tasks[0].output_features["targets"].vocabulary.vocab_size
            for evaluator in self.evaluators.values()
        )

    def _predict_fn(self, decode: Decode, outputs: dict) -> Callable:
        def predict(dataset: tf.data.Dataset) -> list[tuple[int, list[int]]]:
            # SeqIO numbers the examples: (index, features).
            indices, inputs = [], []
            for index, features in dataset.as_numpy_iterator():
                indices.append(int(index))
                inputs.append(features["encoder_input_tokens"])
            progress = Counter(len(inputs), "examples decoded")
            tokens = decode_by_length(decode, np.stack(inputs), self.batch_size, progress)
            # Fixed length, 0 after EOS: SeqIO stacks them, and decoding stops at EOS.
            outputs["tokens"] = [(i, row.tolist()) for i, row in zip(indices, tokens, strict=True)]
            return outputs["tokens"]

        return predict

    def evaluate(self, decode: Decode) -> tuple[dict[str, dict], dict[str, list[dict]]]:
        """Metrics per task (in percent), and the per-example rows per task."""
        metrics, rows = {}, {}
        for name, evaluator in self.evaluators.items():
            outputs: dict = {}
            future, _ = evaluator.evaluate(
                compute_metrics=True, predict_fn=self._predict_fn(decode, outputs)
            )
            metrics[name] = {k: float(v) for k, v in future.result()[name].items()}
            rows[name] = self._rows(evaluator, outputs["tokens"])
        return metrics, rows

    @staticmethod
    def _rows(evaluator: seqio.Evaluator, predictions: list[tuple[int, list[int]]]) -> list[dict]:
        (task,) = evaluator.eval_tasks
        vocabulary = task.output_features["targets"].vocabulary
        by_index = dict(predictions)
        examples = evaluator.cached_task_datasets[task.name].as_numpy_iterator()
        rows = []
        for index, example in enumerate(examples):
            prediction = vocabulary.decode(by_index[index])
            parsed = task.postprocess_fn(prediction, example=example, is_target=False)
            target = task.postprocess_fn(
                _text(example["targets_pretokenized"]), example=example, is_target=True
            )
            scores = [fn([target], [parsed]) for fn in task.metric_fns]
            rows.append(
                {
                    "id": _text(example.get("id", index)),
                    "input": _text(example["inputs_pretokenized"]),
                    "target": _text(example["targets_pretokenized"]),
                    "prediction": prediction,
                    "parsed_prediction": parsed,
                    "correct": _correct(scores),
                }
            )
        return rows


def _correct(scores: list[dict]) -> bool | None:
    """Whether the first metric counts the example as right; None if it is not an accuracy
    (a rationale's ROUGE)."""
    accuracy = scores[0].get("accuracy") if scores else None
    return None if accuracy is None else accuracy == 100.0


class Validation:
    """Teacher-forced loss per task, and the label task's metrics from greedy decoding, on
    the validation split (never test: runs are selected on validation)."""

    def __init__(
        self,
        trainer: Trainer,
        tasks: Mapping[str, tuple[str, Lengths]],
        batch_size: int,
        num_examples: int | None,
        shapes: Mapping[str, packing.RowShape] | None = None,
    ):
        self.trainer, self.batch_size, self.tasks = trainer, batch_size, tasks
        self.loss_batches = {
            task: list(self._loss_dataset(name, lengths, num_examples, shapes and shapes.get(task)))
            for task, (name, lengths) in tasks.items()
        }
        name, lengths = tasks[losses.LABEL]
        self.label = TaskEvaluator(name, VALIDATION, lengths, batch_size, num_examples)

    def _loss_dataset(
        self,
        name: str,
        lengths: Lengths,
        num_examples: int | None,
        shape: packing.RowShape | None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of each task of `name` (a mixture's tasks one after another, in full:
        sampling a mixture would stop at its first exhausted task), packed into `shape`'s
        rows, or padded batches of `batch_size` examples without a shape."""
        for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
            if VALIDATION not in task.splits:
                continue
            if shape is not None:
                examples = task.get_dataset(
                    dict(lengths), split=VALIDATION, shuffle=False, num_epochs=1
                )
                if num_examples:
                    examples = examples.take(num_examples)
                stream = (
                    {"task": {k: ex[k] for k in ("inputs", "targets")}}
                    for ex in examples.as_numpy_iterator()
                )
                for batch, _ in packing.pack_steps(stream, {"task": shape}):
                    yield batch["task"]
                continue
            dataset = seqio.get_dataset(
                task.name,
                task_feature_lengths=dict(lengths),
                dataset_split=VALIDATION,
                shuffle=False,
                num_epochs=1,
                feature_converter=seqio.EncDecFeatureConverter(pack=False),
            )
            if num_examples:
                dataset = dataset.take(num_examples)
            for batch in padded_batches(dataset, self.batch_size):
                batch.pop("rows")
                yield batch

    def task_losses(self, params) -> dict[str, float]:
        figures = {}
        for task, batches in self.loss_batches.items():
            total, tokens = 0.0, 0.0
            for batch in batches:
                global_batch = partitioning.whole_batch(self.trainer.mesh, batch)
                sums = self.trainer.run_eval_step(params, {task: global_batch})[task]
                total, tokens = total + float(sums[0]), tokens + float(sums[1])
            figures[f"loss/{task}"] = total / max(tokens, 1.0)
        return figures

    def evaluate(self, params) -> tuple[dict[str, float], dict[str, list[dict]]]:
        """Validation losses and the label task's metrics (per task of a mixture, and their
        mean as `accuracy` when they have one), plus per-example rows."""
        figures = self.task_losses(params)
        metrics, rows = self.label.evaluate(self.decoder(params))
        for task, values in metrics.items():
            figures.update({f"{task}/{k}": v for k, v in values.items()})
        accuracies = [v["accuracy"] for v in metrics.values() if "accuracy" in v]
        if accuracies:
            figures["accuracy"] = float(np.mean(accuracies))
        return figures, rows

    def decoder(self, params) -> BatchDecoder:
        max_length = self.tasks[losses.LABEL][1]["targets"]
        return BatchDecoder(self.trainer.config, params, self.trainer.mesh, max_length)
