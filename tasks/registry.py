"""Registers every declared dataset's SeqIO tasks (`datasets.DATASETS`) and the mixtures
over them.

`import tasks` registers them with defaults; `register(...)` registers them again with
other settings (a data dir, a vocabulary, a training fraction), replacing the old ones.
The binaries call it with their gin bindings, first importing the users' task modules
(`TASK_MODULES`, as T5X's `MIXTURE_OR_TASK_MODULE`) that declare datasets of their own.
"""

import functools
import importlib
import os
from collections.abc import Sequence

import seqio

from dsbs_jax.data import datasets, metrics
from dsbs_jax.data.datasets import OWN_VOCABULARY, Dataset
from dsbs_jax.data.preprocessors import tokenize, view_preprocessors
from dsbs_jax.data.sources import DsbsSource
from dsbs_jax.gin_utils import ConfigError
from tasks.naming import mixture_name, task_name

# T5's SentencePiece model, as T5X's configs name it; users pass a local copy.
DEFAULT_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"


def import_modules(modules: Sequence[str]) -> None:
    """Import users' task modules, which declare their datasets (`datasets.declare`,
    `tasks.jsonl.jsonl_dataset`)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # whatever a user's module raises, name the module
            absent = isinstance(error, ModuleNotFoundError) and error.name in _packages(module)
            hint = (
                " (expected a module on PYTHONPATH: 'my_tasks' for my_tasks.py)" if absent else ""
            )
            raise ConfigError(
                f"task module {module!r} cannot be imported: {type(error).__name__}: {error}{hint}"
            ) from error


def _packages(module: str) -> list[str]:
    """`a.b.c` -> `a`, `a.b`, `a.b.c`: the names whose absence means the module is not found."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def default_data_dir() -> str:
    """TFDS's default: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def answer_after_phrase(text: str, phrase: str) -> str:
    """The label a chain-of-thought output states: after the last answer phrase, no final '.'."""
    answer = text.rpartition(phrase)[2] if phrase in text else ""
    return answer.strip().removesuffix(".").strip()


def _cot_postprocess(output: str, phrase: str, example=None, is_target: bool = False) -> str:
    del example, is_target  # targets and predictions are read the same way
    return answer_after_phrase(output, phrase)


def register_dataset(
    spec: Dataset,
    vocabulary: seqio.Vocabulary,
    data_dir: str | None = None,
    train_fraction: float = 1.0,
    subsample_seed: int = 0,
) -> list[str]:
    """Register `spec`'s label, rationale and chain-of-thought tasks; returns their names."""
    tfds_name = f"{spec.tfds_name}:{spec.version}"
    source = DsbsSource(tfds_name, data_dir, train_fraction, subsample_seed)
    features = {
        "inputs": seqio.Feature(vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }
    cot_postprocess = functools.partial(_cot_postprocess, phrase=spec.answer_phrase)
    tasks = [
        *[("label", s, spec.label_metrics, None) for s in ("gt", "llm")],
        ("rationale", None, [metrics.rouge_l], None),
        *[("cot", s, spec.label_metrics, cot_postprocess) for s in ("gt", "llm")],
    ]
    names = []
    for kind, label_source, metric_fns, postprocess_fn in tasks:
        name = task_name(spec.name, kind, label_source)
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=source,
            preprocessors=[
                *view_preprocessors(kind, label_source, spec.answer_phrase),
                tokenize,
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=features,
            metric_fns=list(metric_fns),
            postprocess_fn=postprocess_fn,
        )
        names.append(name)
    return names


def register(
    data_dir: str | None = None,
    vocabulary_path: str = DEFAULT_VOCABULARY,
    train_fraction: float = 1.0,
    subsample_seed: int = 0,
    only: Sequence[str] | None = None,
    modules: Sequence[str] = (),
) -> list[str]:
    """Import the task `modules`, then register the tasks of every declared dataset (with
    those the modules declare), or of the datasets named in `only`, and the mixtures."""
    import_modules(modules)
    data_dir = data_dir or default_data_dir()
    names, mixed = [], []
    for spec in map(datasets.get, only) if only is not None else datasets.DATASETS.values():
        vocabulary = seqio.SentencePieceVocabulary(spec.vocabulary_file(data_dir, vocabulary_path))
        names += register_dataset(spec, vocabulary, data_dir, train_fraction, subsample_seed)
        if spec.in_mixtures and spec.vocabulary != OWN_VOCABULARY:
            mixed.append(spec.name)
    for kind, source in (("label", "gt"), ("label", "llm"), ("rationale", None)):
        name = mixture_name(kind, source)
        seqio.MixtureRegistry.remove(name)
        if mixed:
            tasks = [task_name(d, kind, source) for d in mixed]
            seqio.MixtureRegistry.add(name, tasks, default_rate=1.0)
            names.append(name)
    return names
