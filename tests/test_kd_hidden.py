"""Hidden-state distillation inside the training step: the term against numpy on both
models' captured layer outputs, the learned projection, accumulation and checkpoints."""

import jax
import numpy as np
import optax
import pytest
from test_kd_trainer import CONFIG, TEACHER, TOKENS, _run, _teacher_params, _trainer
from test_trainer import _batch

from dsbs_jax import optimizers, partitioning
from dsbs_jax.checkpointing import TrainCheckpoints
from dsbs_jax.distill import HIDDEN, Distillation, layer_spec
from dsbs_jax.models import T5

# Student: 2 + 2 layers of width 16; TEACHER: 2 + 3 layers of width 24.
PAIRS = (("encoder:-1", "encoder:1"), ("decoder:0", "decoder:-1"))


def _hidden(weight=1.0, pairs=PAIRS, kind="mse", teacher=TEACHER, beta=0.0):
    return Distillation(
        teacher,
        beta,
        dtype="float32",
        hidden_weight=weight,
        hidden_layers=pairs,
        hidden_kind=kind,
    )


def _layer_outputs(config, params, inputs, layers):
    """Every layer's output by Flax's capture of all intermediates, picked by hand."""
    _, state = T5(config).apply(
        {"params": params}, **inputs, capture_intermediates=True, mutable=["intermediates"]
    )
    captured = state["intermediates"]
    return [
        np.asarray(captured[side][f"layers_{i}"]["__call__"][0], np.float64) for side, i in layers
    ]


def _np_hidden(student_params, projections, teacher_params, kind):
    """The hidden term in float64: per pair and task, the distance per token weighted by
    the side's tokens (inputs for the encoder, targets for the decoder), over their count."""
    batch, total, tokens = _batch(), 0.0, 0.0
    student_layers = [layer_spec(s, CONFIG) for s, _ in PAIRS]
    teacher_layers = [layer_spec(t, TEACHER) for _, t in PAIRS]
    for task in ("label", "rationale"):
        inputs = {k: batch[task][k] for k in TOKENS}
        student = _layer_outputs(CONFIG, student_params, inputs, student_layers)
        teacher = _layer_outputs(TEACHER, teacher_params, inputs, teacher_layers)
        for pair, ((side, _), s, t) in enumerate(
            zip(student_layers, student, teacher, strict=True)
        ):
            s = s @ np.asarray(projections[str(pair)], np.float64)
            if kind == "mse":
                distance = ((s - t) ** 2).mean(-1)
            else:
                norms = np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1)
                distance = 1 - (s * t).sum(-1) / norms
            if side == "encoder":
                weights = (batch[task]["encoder_input_tokens"] > 0).astype(np.float64)
            else:
                weights = batch[task]["decoder_loss_weights"]
            total, tokens = total + (distance * weights).sum(), tokens + weights.sum()
    return total / tokens, tokens


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_term_equals_numpy_on_the_two_models_layers(kind):
    trainer = _trainer(_hidden(0.25, kind=kind, beta=0.5))
    state = trainer.create_state(seed=0)
    student, projections = jax.device_get((state.params, state.projections))
    assert {k: v.shape for k, v in projections.items()} == {"0": (16, 24), "1": (16, 24)}
    teacher_params = _teacher_params()
    _, _, (metrics,) = _run(trainer, teacher_params)
    hidden, tokens = _np_hidden(student, projections, teacher_params, kind)
    np.testing.assert_allclose(metrics[f"loss/{HIDDEN}"], hidden, rtol=1e-5)
    assert metrics[f"tokens/{HIDDEN}"] == tokens
    blend = 0.3 * metrics["loss/label"] + 0.7 * metrics["loss/rationale"]
    blend += 0.5 * metrics["loss/kd"] + 0.25 * metrics[f"loss/{HIDDEN}"]
    np.testing.assert_allclose(metrics["loss"], blend, rtol=1e-6)


def test_a_same_width_teacher_needs_no_projection_and_itself_adds_nothing():
    """The student as its own teacher, hidden term only: no projection, a zero term, and
    the step of a run without a teacher."""
    plain = _trainer(None)
    student = jax.device_get(plain.create_state(seed=0).params)
    _, plain_after, (plain_metrics,) = _run(plain, None)
    same = _hidden(pairs=(("encoder:0", "encoder:0"), ("decoder:1", "decoder:-1")), teacher=CONFIG)
    trainer = _trainer(same)
    assert trainer.create_state(seed=0).projections == {}
    _, after, (metrics,) = _run(trainer, student)
    assert "loss/kd" not in metrics and abs(metrics[f"loss/{HIDDEN}"]) < 1e-10
    assert metrics["loss"] == pytest.approx(plain_metrics["loss"], rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), after, plain_after)


def test_the_projection_learns_and_the_hidden_term_falls():
    trainer = _trainer(
        _hidden(),
        weights={"label": 0.0, "rationale": 0.0},
        optimizer=optimizers.Optimizer(optax.adam(1e-2), optax.constant_schedule(1e-2)),
    )
    state = trainer.create_state(seed=0)
    initial = jax.device_get(state.projections)
    teacher = trainer.distiller.place_teacher(_teacher_params())
    history = []
    for step in range(30):
        batch = {t: b for t, b in _batch(seed=step % 4).items() if t in trainer.task_weights}
        state, metrics = trainer.run_train_step(
            state, partitioning.global_batch(trainer.mesh, batch), teacher
        )
        history.append(float(metrics[f"loss/{HIDDEN}"]))
    assert np.mean(history[-3:]) < 0.5 * history[0], history
    moved = jax.tree.map(
        lambda a, b: np.abs(a - b).max(), jax.device_get(state.projections), initial
    )
    assert min(jax.tree.leaves(moved)) > 1e-3


def test_two_microbatches_give_the_full_batch_hidden_term_and_update():
    teacher_params = _teacher_params()
    before, full, (full_metrics,) = _run(_trainer(_hidden(kind="cosine")), teacher_params)
    _, accumulated, (metrics,) = _run(
        _trainer(_hidden(kind="cosine"), microbatches=2), teacher_params
    )
    for name in ("loss", f"loss/{HIDDEN}", f"tokens/{HIDDEN}"):
        assert metrics[name] == pytest.approx(full_metrics[name], rel=1e-5), name
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        jax.tree.map(np.subtract, before, accumulated),
        jax.tree.map(np.subtract, before, full),
    )


def test_projections_and_their_optimiser_state_survive_a_checkpoint(tmp_path):
    trainer = _trainer(_hidden(), optimizer=optimizers.adamw(10, 1e-3))
    state = trainer.create_state(seed=0)
    teacher = trainer.distiller.place_teacher(_teacher_params())
    batch = partitioning.global_batch(trainer.mesh, _batch())
    state, _ = trainer.run_train_step(state, batch, teacher)
    saved = TrainCheckpoints(tmp_path)
    saved.save(state, CONFIG, {"step": 1})
    saved.wait()
    restored, _ = saved.restore(1, trainer.abstract_state, trainer.state_sharding)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


def test_bad_hidden_layers_are_refused():
    with pytest.raises(ValueError, match="'middle:1' must be 'encoder:i' or 'decoder:i'"):
        _hidden(pairs=(("middle:1", "decoder:0"),))
    with pytest.raises(
        ValueError, match="'decoder:3': the student's decoder has layers 0 to 1 \\(or -2 to -1\\)"
    ):
        _trainer(_hidden(pairs=(("decoder:3", "decoder:0"),)))
    with pytest.raises(ValueError, match="'encoder:-3': the teacher's encoder has layers 0 to 1"):
        _trainer(_hidden(pairs=(("encoder:0", "encoder:-3"),)))
    with pytest.raises(ValueError, match="'encoder:0' and 'decoder:0' are on different sides"):
        _hidden(pairs=(("encoder:0", "decoder:0"),))
    with pytest.raises(ValueError, match="hidden-state loss must be one of mse, cosine"):
        _hidden(kind="l1")
    with pytest.raises(ValueError, match="needs weight \\(beta\\) > 0 or hidden_weight > 0"):
        _hidden(weight=0.0)
