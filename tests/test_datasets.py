"""One declaration per dataset: what is derived from it (the TFDS builder, the teacher's
answer format, the SeqIO tasks and mixtures) and what a conflicting one is told."""

import dataclasses

import pytest
import seqio

from dsbs_jax.data import builders, datasets, metrics, synthetic, teacher_outputs
from dsbs_jax.data.teacher_outputs import AnswerFormat
from tasks import registry

FORMAT = AnswerFormat(cut_at="Next:", marker="Hence")
PLANETS = datasets.Dataset(
    name="planets",
    fields=("id", "text", "answer"),
    build_input=datasets.Field("text"),
    build_label=datasets.Field("answer"),
    id_field="id",
    answer_format=FORMAT,
    label_metrics=[metrics.accuracy],
    in_mixtures=False,
    version="2.0.0",
)


@pytest.fixture(autouse=True)
def _restore(declaration_tables):
    """Each test's declarations are undone after it."""


def test_the_builder_format_and_tasks_come_from_the_declaration(small_vocabulary, tmp_path):
    assert datasets.declare(PLANETS) is PLANETS
    builder = builders.builder("planets")
    assert builder.name == "dsbs_planets" and str(builder.VERSION) == "2.0.0"
    assert builders.builder("planets") is builder  # made once
    assert teacher_outputs.parse("planets", "Far. Hence Mars.\nNext: more").label == "Mars"
    names = registry.register(str(tmp_path), small_vocabulary, only=["planets", "cqa"])
    assert "dsbs_planets_rationale" in names and "dsbs_planets_cot_llm" in names
    label = seqio.get_mixture_or_task("dsbs_planets_label_gt")
    assert label.metric_fns == [metrics.accuracy]
    # Kept out of the mixtures, which hold the registered datasets that are in them.
    mixture = seqio.get_mixture_or_task("dsbs_label_gt")
    assert [task.name for task in mixture.tasks] == ["dsbs_cqa_label_gt"]


def test_the_paper_datasets_are_declared_with_their_reference_rules():
    assert [name for name in datasets.DATASETS][:6] == [
        "cqa", "svamp", "esnli", "anli1", "asdiv", "synthetic"
    ]  # fmt: skip
    assert datasets.get("svamp").label_matches("(3 + 4)", "(4 + 3)")
    assert datasets.get("esnli").answer_phrase == "Answer:"
    # The generator writes its rule-based teacher's answers with the declared marker.
    assert datasets.get("synthetic").answer_phrase == synthetic.ANSWER_MARKER
    assert datasets.get("synthetic").vocabulary_file("/data", "t5.model") == (
        "/data/dsbs_synthetic/sentencepiece.model"
    )
    assert datasets.get("cqa").vocabulary_file("/data", "t5.model") == "t5.model"
    assert datasets.get("cqa").release_split("validation") == "train"  # held out of train
    assert datasets.get("esnli").release_split("validation") == "valid"


def test_declaring_again_is_harmless_and_a_conflict_names_what_differs():
    datasets.declare(PLANETS)
    datasets.declare(PLANETS)
    with pytest.raises(ValueError, match=r"'planets' is already declared otherwise \(id_field"):
        datasets.declare(dataclasses.replace(PLANETS, id_field=None))
    with pytest.raises(ValueError, match="'planets' already has answer format"):
        datasets.declare(dataclasses.replace(PLANETS, answer_format=AnswerFormat("Q:", "So")))
    with pytest.raises(ValueError, match="unknown dataset 'moons': expected one of"):
        datasets.get("moons")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": "My Planets"}, "expected lower-case letters"),
        ({"vocabulary": "mine"}, "vocabulary 'mine': expected 't5' or 'own'"),
    ],
)
def test_a_bad_declaration_is_refused_when_made(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PLANETS, **change)
