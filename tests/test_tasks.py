"""The SeqIO tasks built from the paper's data: names, views of known examples, subsets."""

import numpy as np
import pytest
import seqio

import tasks
from dsbs_jax.data import metrics

DATASETS = ("cqa", "svamp", "esnli", "anli1", "asdiv", "synthetic")
MIXED = ("anli1", "cqa", "esnli", "svamp")  # the paper's four, sharing T5's vocabulary
LENGTHS = {"inputs": 512, "targets": 256}
BEAVER = "080ef6941410139d6869e78122bc741e"  # the first row of cqa_test.json
BEAVER_INPUT = (
    "A beaver is know for building prowess, their supplies come from where?\n"
    "Answer Choices:\n(a) british columbia\n(b) body of water\n(c) wooded area\n"
    "(d) pay debts\n(e) zoo"
)
BEAVER_RATIONALE = (
    "The answer must be the place where beavers get their supplies. Of the above choices, "
    "only wooded areas have the supplies that beavers need."
)


def examples(task_name: str, split: str) -> dict[str, dict]:
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(LENGTHS, split=split, shuffle=False)
    return {ex["id"].decode(): ex for ex in dataset.as_numpy_iterator()}


def text(example: dict, feature: str) -> str:
    return example[f"{feature}_pretokenized"].decode()


def test_every_task_and_mixture_is_registered(registered_tasks):
    expected = {
        tasks.task_name(d, kind, source)
        for d in DATASETS
        for kind, source in [
            ("label", "gt"),
            ("label", "llm"),
            ("rationale", None),
            ("cot", "gt"),
            ("cot", "llm"),
        ]
    }
    mixtures = {"dsbs_label_gt", "dsbs_label_llm", "dsbs_rationale"}
    assert expected <= set(seqio.TaskRegistry.names())
    assert mixtures <= set(seqio.MixtureRegistry.names())
    assert set(registered_tasks) == expected | mixtures
    # The synthetic dataset has its own vocabulary and ASDiv is not among the paper's four
    # benchmarks (`in_mixtures`): both stay out of the mixtures.
    mixture = seqio.get_mixture_or_task("dsbs_label_gt")
    assert sorted(t.name for t in mixture.tasks) == [f"dsbs_{d}_label_gt" for d in MIXED]


def test_views_of_a_known_example(registered_tasks):
    views = {
        name: examples(f"dsbs_cqa_{name}", "test")[BEAVER]
        for name in ("label_gt", "label_llm", "rationale", "cot_gt", "cot_llm")
    }
    assert text(views["label_gt"], "inputs") == "predict: " + BEAVER_INPUT
    assert text(views["label_gt"], "targets") == "wooded area"
    assert text(views["label_llm"], "targets") == "wooded area"
    assert text(views["rationale"], "inputs") == "explain: " + BEAVER_INPUT
    assert text(views["rationale"], "targets") == BEAVER_RATIONALE
    assert text(views["cot_gt"], "inputs") == BEAVER_INPUT
    assert text(views["cot_gt"], "targets") == BEAVER_RATIONALE + " So the answer is wooded area"
    for view in views.values():
        assert view["targets"][-1] == 1 and view["inputs"][-1] == 1  # EOS appended


def test_chain_of_thought_uses_each_dataset_answer_phrase(registered_tasks):
    svamp = next(iter(examples("dsbs_svamp_cot_llm", "test").values()))
    assert " The answer is (" in text(svamp, "targets")
    esnli = next(iter(examples("dsbs_esnli_cot_gt", "test").values()))
    assert text(esnli, "targets").rsplit(" Answer: ", 1)[1] in metrics.NLI_CLASSES
    task = seqio.get_mixture_or_task("dsbs_svamp_cot_gt")
    assert task.postprocess_fn("It is 9 - 7 = 2. The answer is (9 - 7).") == "(9 - 7)"


def test_nli_premise_and_hypothesis_are_joined_by_the_eos_id(registered_tasks):
    example = next(iter(examples("dsbs_esnli_label_gt", "test").values()))
    assert "</s>" in text(example, "inputs")
    tokens = list(example["inputs"])
    assert tokens.count(1) == 2  # the separator and the final EOS
    task = seqio.get_mixture_or_task("dsbs_esnli_label_gt")
    vocabulary = task.output_features["inputs"].vocabulary
    premise, hypothesis = text(example, "inputs").split("</s>")
    separator = tokens.index(1)
    assert vocabulary.decode(tokens[:separator]) == premise
    assert vocabulary.decode(tokens[separator + 1 : -1]) == hypothesis


def test_train_keeps_parsed_outputs_and_eval_splits_keep_everything(registered_tasks):
    # svamp: 12 unparsed teacher outputs in train, 2 in test (see dsbs-prepare's table).
    assert len(examples("dsbs_svamp_label_gt", "train")) == 720 - 12
    assert len(examples("dsbs_svamp_label_gt", "test")) == 200
    assert len(examples("dsbs_svamp_rationale", "test")) == 200 - 2
    assert len(examples("dsbs_cqa_label_gt", "test")) == 1221
    # Evaluation scores against gold, even for the teacher-label task.
    gold, llm = examples("dsbs_svamp_label_gt", "test"), examples("dsbs_svamp_label_llm", "test")
    assert {i: text(e, "targets") for i, e in llm.items()} == {
        i: text(e, "targets") for i, e in gold.items()
    }
    train_gold = examples("dsbs_svamp_label_gt", "train")
    train_llm = examples("dsbs_svamp_label_llm", "train")
    differ = [
        i for i in train_gold if text(train_gold[i], "targets") != text(train_llm[i], "targets")
    ]
    assert len(differ) > 100  # the teacher is wrong on about a quarter of SVAMP


def test_metrics_of_each_dataset(registered_tasks):
    def metric_names(task_name):
        return [fn.__name__ for fn in seqio.get_mixture_or_task(task_name).metric_fns]

    assert metric_names("dsbs_cqa_label_gt") == ["accuracy"]
    assert metric_names("dsbs_svamp_label_llm") == ["equation_accuracy"]
    assert metric_names("dsbs_anli1_label_gt") == ["nli_metrics"]
    assert metric_names("dsbs_esnli_rationale") == ["rouge_l"]


@pytest.fixture
def subsampled(tfds_data_dir, small_vocabulary, registered_tasks):
    def register(fraction: float, seed: int) -> None:
        tasks.register(
            str(tfds_data_dir), small_vocabulary, train_fraction=fraction, subsample_seed=seed
        )

    yield register
    register(1.0, 0)


def test_subsampling_selects_the_same_examples_for_every_task(subsampled):
    full = set(examples("dsbs_cqa_label_gt", "train"))
    subsampled(0.25, seed=1)
    label = set(examples("dsbs_cqa_label_gt", "train"))
    assert label == set(examples("dsbs_cqa_rationale", "train"))
    assert label == set(examples("dsbs_cqa_cot_llm", "train"))
    assert label < full
    assert abs(len(label) / len(full) - 0.25) < 0.02  # a hash threshold: close, not exact
    assert len(examples("dsbs_cqa_label_gt", "test")) == 1221  # evaluation is never subsampled
    subsampled(0.25, seed=2)
    other = set(examples("dsbs_cqa_label_gt", "train"))
    assert other != label and abs(len(other) - len(label)) < 0.03 * len(full)


def test_bad_fraction_is_refused(subsampled):
    with pytest.raises(ValueError, match="train_fraction"):
        subsampled(0.0, seed=0)


def test_task_names_reject_unknown_kinds():
    with pytest.raises(ValueError, match="unknown task kind"):
        tasks.task_name("cqa", "summary", "gt")
    with pytest.raises(ValueError, match="source 'gt' or 'llm'"):
        tasks.task_name("cqa", "label", None)
    assert tasks.mixture_name("rationale") == "dsbs_rationale"
    assert np.all([tasks.mixture_name("label", s) == f"dsbs_label_{s}" for s in ("gt", "llm")])
