"""Logit distillation from an online teacher inside the training step: the KL term against
numpy on the two models' own logits, accumulation, sharding, and the checks on the teacher."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from test_trainer import _batch, _sgd
from tiny import tiny_config

from dsbs_jax import losses, optimizers, partitioning
from dsbs_jax.distill import TOPK_IDS, TOPK_LOGPROBS, Distillation
from dsbs_jax.models import T5
from dsbs_jax.trainer import Trainer

CONFIG = tiny_config()
# Another shape, the same vocabulary: what a larger same-family teacher looks like.
TEACHER = tiny_config(emb_dim=24, num_heads=4, head_dim=6, mlp_dim=48, num_decoder_layers=3)
TOKENS = ("encoder_input_tokens", "decoder_input_tokens")


def _teacher_params(config=TEACHER, seed: int = 7):
    tokens = np.ones((1, 1), np.int32)
    boxed = T5(config).init(jax.random.key(seed), tokens, tokens)["params"]
    return jax.device_get(nn.meta.unbox(boxed))


def _trainer(distillation, weights=None, optimizer=None, mesh=None, microbatches=1):
    return Trainer(
        CONFIG,
        optimizer or _sgd(),
        mesh or partitioning.make_mesh(1),
        weights or losses.task_weights("dsbs", 0.3),
        num_microbatches=microbatches,
        distillation=distillation,
    )


def _run(trainer, teacher_params, steps=1, batches=None):
    """`steps` steps from seed 0: parameters before and after, and each step's metrics."""
    state = trainer.create_state(seed=0)
    before = jax.device_get(state.params)
    teacher = None if teacher_params is None else trainer.distiller.place_teacher(teacher_params)
    history = []
    for step in range(steps):
        batch = (batches or [_batch(seed=s) for s in range(steps)])[step]
        batch = {task: batch[task] for task in trainer.task_weights}
        batch = partitioning.global_batch(trainer.mesh, batch)
        state, metrics = trainer.run_train_step(state, batch, teacher)
        history.append(jax.device_get(metrics))
    return before, jax.device_get(state.params), history


def _np_log_softmax(logits) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kd(student_params, teacher_config, teacher_params, tasks, temperature, direction):
    """The KL term from each model's logits by `T5.apply` outside the trainer, in float64:
    sum over the tasks' real tokens of T^2 * KL, over the number of those tokens."""
    batch, total, tokens = _batch(), 0.0, 0.0
    for task in tasks:
        inputs = {k: batch[task][k] for k in TOKENS}
        student = T5(CONFIG).apply({"params": student_params}, **inputs)
        teacher = T5(teacher_config).apply({"params": teacher_params}, **inputs)
        log_p = _np_log_softmax(np.asarray(student, np.float64) / temperature)
        log_q = _np_log_softmax(np.asarray(teacher, np.float64) / temperature)
        log_a, log_b = (log_q, log_p) if direction == "forward" else (log_p, log_q)
        kl = temperature**2 * (np.exp(log_a) * (log_a - log_b)).sum(-1)
        weights = batch[task]["decoder_loss_weights"]
        total, tokens = total + (kl * weights).sum(), tokens + weights.sum()
    return total / tokens, tokens


@pytest.mark.parametrize(
    "temperature, direction, tasks, dtype, rtol",
    [(1.0, "forward", None, "float32", 1e-5), (2.0, "forward", None, "float32", 1e-5)]
    + [(1.0, "reverse", None, "float32", 1e-5), (2.0, "reverse", ("label",), "float32", 1e-5)]
    # bfloat16, as the trainer runs a teacher by default: numpy gets the teacher's logits
    # from an eager bfloat16 `apply`, whose roundings differ from the jitted step's fusions.
    + [(2.0, "forward", None, "bfloat16", 2e-3)],
)
def test_kd_term_equals_numpy_on_the_two_models_logits(temperature, direction, tasks, dtype, rtol):
    distillation = Distillation(TEACHER, 0.7, temperature, direction, tasks, dtype)
    teacher_params = _teacher_params()
    before, _, (metrics,) = _run(_trainer(distillation), teacher_params)
    teacher_config = dataclasses.replace(TEACHER, dtype=dtype)
    teacher_params = jax.tree.map(lambda x: x.astype(dtype), teacher_params)
    kd_tasks = tasks or ("label", "rationale")
    kd, tokens = _np_kd(before, teacher_config, teacher_params, kd_tasks, temperature, direction)
    np.testing.assert_allclose(metrics["loss/kd"], kd, rtol=rtol)
    assert metrics["tokens/kd"] == tokens
    expected = 0.3 * metrics["loss/label"] + 0.7 * metrics["loss/rationale"]
    np.testing.assert_allclose(metrics["loss"], expected + 0.7 * metrics["loss/kd"], rtol=1e-6)


def test_a_teacher_that_is_the_student_adds_no_loss_and_no_gradient():
    """KL(p || p) = 0 and its gradient vanishes there: the step equals one without a
    teacher. Float32 activations, so teacher and student compute the very same logits."""
    plain = _trainer(None)
    student = jax.device_get(plain.create_state(seed=0).params)
    _, plain_after, (plain_metrics,) = _run(plain, None)
    with_teacher = _trainer(Distillation(CONFIG, 1.0, 2.0, dtype="float32"))
    _, after, (metrics,) = _run(with_teacher, student)
    assert abs(metrics["loss/kd"]) < 1e-6
    assert metrics["loss"] == pytest.approx(plain_metrics["loss"], rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), after, plain_after)
    # The step's FLOP count includes the teacher's forward pass.
    batch = partitioning.global_batch(plain.mesh, _batch())
    state = with_teacher.create_state(seed=0)
    teacher = with_teacher.distiller.place_teacher(student)
    assert with_teacher.flops_per_step(state, batch, teacher) > plain.flops_per_step(state, batch)


def test_four_microbatches_give_the_full_batch_loss_kd_and_update():
    distillation = Distillation(TEACHER, 0.5, 2.0, "reverse")
    teacher_params = _teacher_params()
    before, full, (full_metrics,) = _run(_trainer(distillation), teacher_params)
    _, accumulated, (accumulated_metrics,) = _run(
        _trainer(distillation, microbatches=4), teacher_params
    )
    for name in ("loss", "loss/kd", "loss/label", "loss/rationale", "tokens/kd"):
        assert accumulated_metrics[name] == pytest.approx(full_metrics[name], rel=1e-5), name
    # SGD with rate 1: params_after - params_before is minus the gradient.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        jax.tree.map(np.subtract, before, accumulated),
        jax.tree.map(np.subtract, before, full),
    )


@pytest.mark.parametrize("model_parallelism, fsdp_parallelism", [(2, 1), (1, 4), (2, 2)])
def test_a_distilling_step_on_a_sharded_mesh_matches_one_device(
    model_parallelism, fsdp_parallelism
):
    assert jax.device_count() == 4, "conftest gives the tests 4 host devices"
    one = partitioning.make_mesh(devices=jax.devices()[:1])
    sharded = partitioning.make_mesh(model_parallelism, fsdp_parallelism)
    # A float32 teacher: the comparison is of placements, not of bfloat16 roundings.
    distillation = Distillation(TEACHER, 0.5, dtype="float32")
    teacher_params = _teacher_params()
    results = {}
    for name, mesh in (("one", one), ("sharded", sharded)):
        trainer = _trainer(distillation, optimizer=optimizers.adamw(10, 1e-3), mesh=mesh)
        _, after, history = _run(trainer, teacher_params, steps=3)
        results[name] = ([(m["loss"], m["loss/kd"]) for m in history], after)
    np.testing.assert_allclose(results["sharded"][0], results["one"][0], rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        results["sharded"][1],
        results["one"][1],
    )
    # By default the teacher is placed by its own logical axes, in bfloat16: split over
    # the model axis and, like the student, over fsdp.
    trainer = _trainer(Distillation(TEACHER, 0.5), mesh=sharded)
    teacher = trainer.distiller.place_teacher(teacher_params)
    wi = teacher["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert wi.dtype == jax.numpy.bfloat16
    assert wi.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
    assert wi.addressable_shards[0].data.size == wi.size // (fsdp_parallelism * model_parallelism)


def test_a_teacher_with_another_vocabulary_or_bad_options_is_refused():
    other = Distillation(tiny_config(vocab_size=96), 1.0)
    with pytest.raises(ValueError, match="teacher's vocabulary has 96 tokens, the student's 64"):
        _trainer(other)
    with pytest.raises(ValueError, match="distillation tasks .* must be distinct tasks"):
        _trainer(Distillation(TEACHER, 1.0, tasks=("rationale",)), {"label": 1.0})
    with pytest.raises(ValueError, match="KL direction"):
        Distillation(TEACHER, 1.0, direction="sideways")
    with pytest.raises(ValueError, match="beta"):
        Distillation(TEACHER, -1.0)
    trainer = _trainer(Distillation(TEACHER, 1.0))
    with pytest.raises(ValueError, match="pass teacher_params"):
        _run(trainer, None)
    with pytest.raises(ValueError, match="teacher: parameter"):
        trainer.distiller.place_teacher(_teacher_params(CONFIG))


def test_distilling_alone_moves_the_student_towards_the_teacher():
    """Task weights 0 and beta 1: the student's only signal is the teacher's distribution
    (a different random model); its KL to the teacher falls."""
    trainer = _trainer(
        Distillation(TEACHER, 1.0),
        weights={"label": 0.0, "rationale": 0.0},
        optimizer=optimizers.Optimizer(optax.adam(1e-2), optax.constant_schedule(1e-2)),
    )
    batches = [_batch(seed=s % 4) for s in range(40)]
    _, _, history = _run(trainer, _teacher_params(), steps=40, batches=batches)
    kd = [float(m["loss/kd"]) for m in history]
    assert np.isclose(history[0]["loss"], kd[0])
    assert np.mean(kd[-4:]) < 0.5 * kd[0], kd  # about 1.06 -> 0.32 here


def _with_top_k(batch, teacher_params, k):
    """The batch with an offline teacher's features: its top-k tokens and log-probabilities."""
    batch = {task: dict(features) for task, features in batch.items()}
    for features in batch.values():
        inputs = {name: features[name] for name in TOKENS}
        logits = T5(TEACHER).apply({"params": teacher_params}, **inputs)
        logprobs, ids = jax.lax.top_k(jax.nn.log_softmax(logits), k)
        features[TOPK_IDS], features[TOPK_LOGPROBS] = np.asarray(ids), np.asarray(logprobs)
    return batch


def test_an_offline_teacher_with_every_token_takes_the_online_teachers_step():
    teacher_params = _teacher_params()
    online = Distillation(TEACHER, 0.7, 2.0, "reverse", dtype="float32")
    _, online_after, (online_metrics,) = _run(_trainer(online), teacher_params)
    offline = Distillation(None, 0.7, 2.0, "reverse")
    full = [_with_top_k(_batch(), teacher_params, CONFIG.vocab_size)]
    _, offline_after, (offline_metrics,) = _run(_trainer(offline), None, batches=full)
    for name in ("loss", "loss/kd", "tokens/kd"):
        assert offline_metrics[name] == pytest.approx(online_metrics[name], rel=1e-5), name
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        offline_after,
        online_after,
    )
    # Fewer tokens: the KL over the teacher's top 8 only, renormalised, is another figure.
    top8_batches = [_with_top_k(_batch(), teacher_params, 8)]
    _, _, (top8,) = _run(_trainer(offline), None, batches=top8_batches)
    assert np.isfinite(top8["loss/kd"]) and top8["loss/kd"] != offline_metrics["loss/kd"]
    with pytest.raises(ValueError, match="needs an online teacher"):
        Distillation(None, 0.7, hidden_weight=1.0)
