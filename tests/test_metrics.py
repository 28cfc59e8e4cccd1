"""Metrics: the arithmetic evaluator on valid, invalid and hostile text, and each metric on
small literal inputs with hand-computed scores."""

import math

import pytest

from dsbs_jax.data import metrics
from dsbs_jax.data.metrics import equation_value


@pytest.mark.parametrize(
    "text, value",
    [
        ("( 84.0 / 2.0 )", 42.0),
        ("(84 / 2)", 42.0),
        ("( 10.0 - ( 6.0 + 3.0 ) )", 1.0),
        ("2 + 3 * 4", 14.0),
        ("(2 + 3) * 4", 20.0),
        ("8 - 2 - 1", 5.0),
        ("16 / 4 / 2", 2.0),
        ("10 / 4", 2.5),
        ("-3 + 5", 2.0),
        ("2 - -3", 5.0),
        ("-(2 * 3)", -6.0),
        (".5 + 1.", 1.5),
        ("  7\n", 7.0),
    ],
)
def test_equation_values(text, value):
    assert equation_value(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "()",
        "(1 + 2",
        "1 + 2)",
        "1 2",
        "1 / 0",
        "1 / (2 - 2)",
        "2 ** 3",
        "2 ^ 3",
        "+2",
        "1e3",
        "1_000",
        "11,210 / 84",
        "(175, 5)",
        "((29/2) and (30/2))",
        "(some - 8)",
        "(2 * x)",
        "\u0663 + 1",  # an Arabic-Indic digit, which Python's float() would accept
        "9" * 400,  # overflows to infinity
        "(" * 5000 + "1" + ")" * 5000,  # deeper than any equation, and than the stack
        "-" * 5000 + "1",
    ],
)
def test_anything_but_arithmetic_has_no_value(text):
    assert equation_value(text) is None


def test_code_in_an_equation_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile = "__import__('os').system('touch x')"
    assert equation_value(hostile) is None
    assert metrics.equation_accuracy(["( 1.0 + 1.0 )"], [hostile]) == {"accuracy": 0.0}
    assert not (tmp_path / "x").exists()


def test_equation_accuracy_compares_values():
    targets = ["( 84.0 / 2.0 )", "( 0.3 )", "( 610769.0 + 590796.0 )", "( 5.0 - 2.0 )"]
    predictions = ["(84 / 2)", "(0.1 + 0.2)", "(610769 + 590796 + 22)", "(5 - 2"]
    assert metrics.equation_accuracy(targets, predictions) == {"accuracy": 50.0}


def test_a_target_without_a_value_matches_nothing():
    assert not metrics.equations_match("(some - 8)", "(some - 8)")


def test_accuracy_strips_whitespace_but_keeps_case():
    targets = ["california", "math problem", "zoo"]
    predictions = ["California", " math problem\n", "zoo"]
    assert metrics.accuracy(targets, predictions)["accuracy"] == pytest.approx(200 / 3)


def test_lengths_must_agree():
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.accuracy(["a", "b"], ["a"])


def test_nli_metrics():
    targets = ["entailment"] * 3 + ["neutral"] * 2 + ["contradiction"] * 3
    predictions = ["entailment", "neutral", "maybe"]
    predictions += ["neutral", "contradiction"]
    predictions += ["contradiction", "contradiction", " entailment "]
    scores = metrics.nli_metrics(targets, predictions)
    assert scores == {
        "accuracy": 50.0,
        "accuracy_entailment": pytest.approx(100 / 3),
        "accuracy_neutral": 50.0,
        "accuracy_contradiction": pytest.approx(200 / 3),
        **confusion([[1, 1, 0], [0, 1, 1], [1, 0, 2]]),
        "unrecognised_predictions": 1,
    }


def confusion(matrix: list[list[int]]) -> dict[str, int]:
    """The expected `confusion/{gold}->{predicted}` scalars of a matrix (rows gold)."""
    classes = ("entailment", "neutral", "contradiction")
    return {
        f"confusion/{gold}->{predicted}": matrix[i][j]
        for i, gold in enumerate(classes)
        for j, predicted in enumerate(classes)
    }


def test_nli_metrics_without_a_class_in_the_gold():
    scores = metrics.nli_metrics(["entailment"], ["entailment"])
    assert math.isnan(scores["accuracy_neutral"])
    cells = {k: v for k, v in scores.items() if k.startswith("confusion/")}
    assert cells == confusion([[1, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_nli_targets_must_be_classes():
    with pytest.raises(ValueError, match=r"\['yes'\] are not NLI classes"):
        metrics.nli_metrics(["yes"], ["entailment"])


def test_rouge_l():
    # LCS 5 of 6 target and 5 prediction words: F = 2 * 1 * (5 / 6) / (1 + 5 / 6) = 10 / 11.
    targets = ["the cat sat on the mat", "cats are sleeping", "one two"]
    predictions = ["the cat on the mat", "cat are sleeps", "three four"]
    expected = (10 / 11 + 1 + 0) / 3 * 100  # stemmed: "cats" = "cat", "sleeping" = "sleeps"
    assert metrics.rouge_l(targets, predictions)["rouge_l"] == pytest.approx(expected)
