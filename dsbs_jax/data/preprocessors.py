"""SeqIO preprocessors: the label, rationale and chain-of-thought views of one example.

Each view keeps the example's `id`, so paired batches can be checked for alignment.
"""

import functools

import seqio
import tensorflow as tf

from dsbs_jax.data.datasets import NLI_SEPARATOR
from dsbs_jax.prefixes import LABEL_PREFIX, RATIONALE_PREFIX


def _label(example: dict, source: str) -> tf.Tensor:
    return example["label"] if source == "gt" else example["teacher_label"]


@seqio.map_over_dataset
def label_view(example: dict, source: str) -> dict:
    """`predict: <input>` -> the gold (`gt`) or the teacher's (`llm`) label."""
    return {
        "id": example["id"],
        "inputs": tf.strings.join([LABEL_PREFIX, example["input"]]),
        "targets": _label(example, source),
    }


@seqio.map_over_dataset
def rationale_view(example: dict) -> dict:
    """`explain: <input>` -> the teacher's rationale."""
    return {
        "id": example["id"],
        "inputs": tf.strings.join([RATIONALE_PREFIX, example["input"]]),
        "targets": example["teacher_rationale"],
    }


@seqio.map_over_dataset
def chain_of_thought_view(example: dict, source: str, answer_phrase: str) -> dict:
    """The single-task baseline: `<input>` -> `<rationale> <answer phrase> <label>`."""
    target = tf.strings.join(
        [example["teacher_rationale"], " ", answer_phrase, " ", _label(example, source)]
    )
    return {"id": example["id"], "inputs": example["input"], "targets": target}


def keep_parsed(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Only examples whose teacher output parsed: their rationale and label are real."""
    return dataset.filter(lambda example: example["teacher_parsed"])


def view_preprocessors(kind: str, source: str | None, answer_phrase: str) -> list:
    """The preprocessors (before tokenization) of a `label`, `rationale` or `cot` task."""
    if kind == "label":
        return [functools.partial(label_view, source=source)]
    if kind == "rationale":
        return [keep_parsed, rationale_view]
    if kind == "cot":
        return [
            keep_parsed,
            functools.partial(chain_of_thought_view, source=source, answer_phrase=answer_phrase),
        ]
    raise ValueError(f"unknown task kind {kind!r}: expected label, rationale or cot")


def tokenize(dataset: tf.data.Dataset, output_features: dict) -> tf.data.Dataset:
    """SeqIO's `tokenize`, except that a literal `</s>` becomes the EOS id.

    The reference joins an NLI premise and hypothesis with `</s>`, which Hugging Face's T5
    tokenizer turns into the EOS token; a SentencePiece model would spell it out instead.
    """

    def encode(text: tf.Tensor, vocabulary) -> tf.Tensor:
        pieces = tf.strings.split(text, NLI_SEPARATOR)
        ids = tf.cast(vocabulary.encode_tf(pieces), tf.int32)
        separators = tf.RaggedTensor.from_tensor(tf.fill([tf.size(pieces), 1], vocabulary.eos_id))
        return tf.concat([ids, separators], axis=1).flat_values[:-1]

    def tokenize_example(example: dict) -> dict:
        tokenized = dict(example)
        for key, feature in output_features.items():
            tokenized[f"{key}_pretokenized"] = example[key]
            tokenized[key] = encode(example[key], feature.vocabulary)
        return tokenized

    return dataset.map(tokenize_example, num_parallel_calls=tf.data.AUTOTUNE)
