"""`dsbs-annotate --logprobs K`: the server's token log-probabilities stored with each output
(completions and chat shapes), a confidence per rationale and label, `--min_confidence`, the
confidence-vs-correctness report and plot, and servers that ignore or reject the parameter."""

import json

import pytest
from openai_server import FakeOpenAI, synthetic_run_flags

from dsbs_jax.data import synthetic, teacher_outputs
from dsbs_jax.programs import annotate
from dsbs_jax.teacher import confidence

SURE, UNSURE = -0.05, -1.5


@pytest.fixture(scope="module")
def problems() -> list[synthetic.Example]:
    return synthetic.generate_splits(num_train=0, num_validation=0, num_test=40)["test"]


def right(example: synthetic.Example) -> bool:
    return example.teacher.answer == example.problem.answer


def server_for(problems, **options) -> FakeOpenAI:
    """The rule-based teacher, sure of its right answers and unsure of its wrong ones."""
    responses = {e.problem.question: e.teacher.text for e in problems}
    sureness = {e.teacher.text: SURE if right(e) else UNSURE for e in problems}
    return FakeOpenAI(responses, token_logprob=sureness, **options)


def run(server, problems, tmp_path, *extra) -> tuple[int, list[dict], dict]:
    rows = [
        {"id": e.id, "question": e.problem.question, "answer": str(e.problem.answer)}
        for e in problems
    ]
    input_path = tmp_path / "input.jsonl"
    input_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output_dir = tmp_path / "out"
    code = annotate.main(
        [*synthetic_run_flags(server, input_path, output_dir), "--backoff_base=0.01", *extra]
    )
    annotations = [json.loads(line) for line in (output_dir / "annotations_test.jsonl").open()]
    manifest = json.loads((output_dir / "manifest_test.json").read_text())
    return code, annotations, manifest


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_logprobs_are_stored_scored_and_related_to_being_right(problems, tmp_path, endpoint):
    with server_for(problems) as server:
        code, rows, manifest = run(
            server, problems, tmp_path, "--logprobs=3", f"--endpoint={endpoint}"
        )
        asked = server.received[0].body
    assert code == 0
    if endpoint == "chat":
        assert (asked["logprobs"], asked["top_logprobs"]) == (True, 3)
    else:
        assert asked["logprobs"] == 3
    by_id = {e.id: e for e in problems}
    for row in rows:
        [tokens] = row["logprobs"]
        assert "".join(tokens["tokens"]) == row["outputs"][0]
        assert all(len(alternatives) == 3 for alternatives in tokens["top"])
        expected = SURE if right(by_id[row["id"]]) else UNSURE
        [score] = row["confidence"]
        assert score["rationale"] == pytest.approx(expected)
        assert score["label"] == pytest.approx(expected)
    report = manifest["confidence"]
    assert report["auroc"] == 1.0  # every right output is surer than every wrong one
    assert report["outputs"] == len(problems)
    assert report["bins"][0]["accuracy"] < report["bins"][-1]["accuracy"] == 1.0
    assert manifest["logprobs"] == {"asked": 3, "outputs": 40, "without": 0, "refused": ""}
    png = (tmp_path / "out" / "confidence_test.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_min_confidence_keeps_only_the_sure_outputs(problems, tmp_path):
    with server_for(problems) as server:
        code, rows, _ = run(server, problems, tmp_path, "--logprobs=1", "--min_confidence=-0.5")
    assert code == 0
    by_id = {e.id: e for e in problems}
    assert any(not right(e) for e in problems)
    for row in rows:
        assert (row["rationale"] is not None) == right(by_id[row["id"]])


@pytest.mark.parametrize("behaviour", ["ignore", "reject"])
def test_a_server_without_logprobs_gives_text_only_and_says_so(
    problems, tmp_path, capsys, behaviour
):
    with server_for(problems, logprobs=behaviour) as server:
        code, rows, manifest = run(server, problems, tmp_path, "--logprobs=2")
        requests = len(server.received)
    assert code == 0
    assert all(row["logprobs"] == [None] and row["rationale"] for row in rows if row["kept"])
    assert len(rows) == len(problems)
    message = capsys.readouterr().err
    assert manifest["logprobs"]["without"] == len(problems)
    assert manifest["confidence"] is None
    if behaviour == "reject":
        assert "rejects logprobs" in message and "not supported" in message
        assert message.count("rejects logprobs (") == 1  # warned once
        assert manifest["logprobs"]["refused"]
        # Each request rejected before the refusal was seen is asked again: no more.
        assert len(problems) < requests < 2 * len(problems)
    else:
        assert "the server ignores them" in message and requests == len(problems)


def test_logprobs_change_the_fingerprint_and_need_the_openai_backend(problems, tmp_path, capsys):
    with server_for(problems[:3]) as server:
        run(server, problems[:3], tmp_path)
        code, rows, _ = run(server, problems[:3], tmp_path, "--logprobs=1")
    assert code == 0 and len(server.received) == 6  # asked again: the rows hold no logprobs
    for bad in (["--backend=seq2seq", "--logprobs=1"], ["--min_confidence=-1"]):
        with pytest.raises(SystemExit) as stop:
            annotate.parse_flags(
                ["--input=jsonl:x", "--split=test", "--prompt=p", "--output_dir=o", *bad]
            )
        assert stop.value.code == 2
    assert "--logprobs K is for --backend openai" in capsys.readouterr().err


def test_confidence_splits_rationale_and_label_at_the_marker():
    fmt = teacher_outputs.AnswerFormat("Q:", "So the answer is")
    tokens = confidence.Tokens(
        ("It", " is", " 4.", " So", " the", " answer", " is", " 4.", "\n\nQ:", " next"),
        (-1.0, -1.0, -1.0, -9.0, -9.0, -9.0, -9.0, -0.5, -9.0, -9.0),
        ((),) * 10,
    )
    score = confidence.confidence(fmt, tokens)
    # " So" starts before the marker (its space): the rationale's; the marker's other tokens
    # and what follows the cut belong to neither.
    assert score["rationale"] == pytest.approx((-3.0 - 9.0) / 4)
    assert score["label"] == pytest.approx(-0.5)
    assert confidence.confidence(fmt, confidence.Tokens(("no marker",), (-1.0,), ((),))) is None
