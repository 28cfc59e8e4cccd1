"""The training step: losses computed independently, accumulation, sharding, optimisers."""

import functools
import operator

import jax
import numpy as np
import optax
import pytest
from tiny import tiny_config

from dsbs_jax import losses, optimizers, partitioning
from dsbs_jax.models import T5
from dsbs_jax.trainer import LossOptions, Trainer

CONFIG = tiny_config()


def _task_features(rng: np.random.Generator, rows: int, inputs: int, targets: int) -> dict:
    """Features as SeqIO's unpacked converter makes them: targets 0-padded after a random
    length, decoder inputs the targets shifted right, loss weights on real tokens."""
    lengths = rng.integers(1, targets + 1, rows)
    weights = (np.arange(targets)[None] < lengths[:, None]).astype(np.int32)
    target_tokens = rng.integers(2, CONFIG.vocab_size, (rows, targets)) * weights
    encoder = rng.integers(2, CONFIG.vocab_size, (rows, inputs))
    encoder[:, inputs - rng.integers(0, inputs // 2, rows).max() :] = 0
    return {
        "encoder_input_tokens": encoder.astype(np.int32),
        "decoder_input_tokens": np.pad(target_tokens[:, :-1], ((0, 0), (1, 0))).astype(np.int32),
        "decoder_target_tokens": target_tokens.astype(np.int32),
        "decoder_loss_weights": weights,
    }


def _batch(seed: int = 0, rows: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "label": _task_features(rng, rows, 12, 4),
        "rationale": _task_features(rng, rows, 12, 9),
    }


def _numpy_token_mean(params, features) -> float:
    """The reference's task loss, from the model's logits with numpy: mean over real tokens."""
    model_inputs = {k: features[k] for k in ("encoder_input_tokens", "decoder_input_tokens")}
    logits = np.asarray(T5(CONFIG).apply({"params": params}, **model_inputs), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets, weights = features["decoder_target_tokens"], features["decoder_loss_weights"]
    token_losses = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return float((token_losses * weights).sum() / weights.sum())


def _sgd() -> optimizers.Optimizer:
    """Plain SGD with rate 1: the parameter change is exactly minus the gradient."""
    return optimizers.Optimizer(optax.sgd(1.0), optax.constant_schedule(1.0))


def _one_step(mode, alpha=0.5, optimizer=None, mesh=None, microbatches=1, batch=None, **options):
    mesh = mesh or partitioning.make_mesh(1)
    weights = losses.task_weights(mode, alpha)
    trainer = Trainer(
        CONFIG, optimizer or _sgd(), mesh, weights, LossOptions(**options), microbatches
    )
    state = trainer.create_state(seed=0)
    before = jax.device_get(state.params)
    batch = {task: features for task, features in (batch or _batch()).items() if task in weights}
    state, metrics = trainer.run_train_step(state, partitioning.global_batch(mesh, batch))
    return before, jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.parametrize("mode", ["standard", "dsbs", "cot"])
def test_one_step_loss_equals_the_blend_of_per_task_token_means(mode):
    before, _, metrics = _one_step(mode, alpha=0.3)
    batch = _batch()
    label = _numpy_token_mean(before, batch["label"])
    expected = label
    if mode == "dsbs":
        rationale = _numpy_token_mean(before, batch["rationale"])
        expected = 0.3 * label + 0.7 * rationale
        np.testing.assert_allclose(metrics["loss/rationale"], rationale, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss/label"], label, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    assert metrics["tokens/label"] == batch["label"]["decoder_loss_weights"].sum()


def test_alpha_one_equals_standard_mode():
    _, dsbs_params, dsbs_metrics = _one_step("dsbs", alpha=1.0)
    _, standard_params, standard_metrics = _one_step("standard")
    assert dsbs_metrics["loss"] == pytest.approx(standard_metrics["loss"], rel=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        dsbs_params,
        standard_params,
    )


def test_four_microbatches_give_the_full_batch_gradient():
    before, full, full_metrics = _one_step("dsbs", microbatches=1)
    _, accumulated, accumulated_metrics = _one_step("dsbs", microbatches=4)
    assert accumulated_metrics["loss"] == pytest.approx(full_metrics["loss"], rel=1e-6)
    # SGD with rate 1: params_after - params_before is minus the gradient, known to the
    # parameters' float32 resolution (a difference of two numbers near 1 is good to ~1e-7).
    full_grads = jax.tree.map(np.subtract, before, full)
    accumulated_grads = jax.tree.map(np.subtract, before, accumulated)
    jax.tree.map(
        lambda a, b, p: np.testing.assert_allclose(
            a, b, rtol=1e-5, atol=2 * np.finfo(np.float32).eps * np.abs(p).max()
        ),
        accumulated_grads,
        full_grads,
        before,
    )


# The meshes of the 4 host devices a step must not depend on: (model, fsdp) parallelism.
MESHES = {
    "data 4": (1, 1),
    "data 2 x model 2": (2, 1),
    "fsdp 4": (1, 4),
    "data 2 x fsdp 2": (1, 2),
    "fsdp 2 x model 2": (2, 2),
}
ONE_DEVICE = "one device"


def _mesh(name: str) -> jax.sharding.Mesh:
    if name == ONE_DEVICE:
        return partitioning.make_mesh(devices=jax.devices()[:1])
    return partitioning.make_mesh(*MESHES[name])


def _three_steps(mesh_name: str, mode: str, microbatches: int = 1, optimizer=None):
    """Losses and parameters after 3 AdamW steps, and the final state."""
    mesh = _mesh(mesh_name)
    trainer = Trainer(
        CONFIG,
        optimizer or optimizers.adamw(10, 1e-3),
        mesh,
        losses.task_weights(mode, 0.5),
        num_microbatches=microbatches,
    )
    state = trainer.create_state(seed=0)
    step_losses = []
    for step in range(3):
        batch = {t: f for t, f in _batch(seed=step).items() if t in trainer.task_weights}
        state, metrics = trainer.run_train_step(state, partitioning.global_batch(mesh, batch))
        step_losses.append(float(metrics["loss"]))
    return step_losses, jax.device_get(state.params), state


@pytest.fixture(scope="module")
def one_device_runs() -> dict:
    return {}


@pytest.mark.parametrize(
    "mesh_name, mode, microbatches",
    [(name, "dsbs", 1) for name in MESHES]
    + [("fsdp 2 x model 2", mode, 1) for mode in ("standard", "cot")]
    + [("fsdp 2 x model 2", "dsbs", 2), ("fsdp 4", "dsbs", 2)],
)
def test_every_mesh_of_four_devices_trains_as_one_device(
    mesh_name, mode, microbatches, one_device_runs
):
    assert jax.device_count() == 4, "conftest gives the tests 4 host devices"
    key = (mode, microbatches)
    if key not in one_device_runs:
        one_device_runs[key] = _three_steps(ONE_DEVICE, mode, microbatches)[:2]
    expected_losses, expected_params = one_device_runs[key]
    step_losses, params, _ = _three_steps(mesh_name, mode, microbatches)
    np.testing.assert_allclose(step_losses, expected_losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        params,
        expected_params,
    )


def test_parameters_and_adam_moments_are_split_over_fsdp_and_model_not_copied():
    state = _three_steps("fsdp 2 x model 2", "dsbs")[2]
    wi = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert dict(wi.sharding.mesh.shape) == {"data": 1, "fsdp": 2, "model": 2}
    assert wi.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
    assert wi.addressable_shards[0].data.size == wi.size // 4
    embedding = state.params["token_embedder"]["embedding"]
    assert embedding.sharding.spec == jax.sharding.PartitionSpec("model", "fsdp")
    moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.shape == wi.shape]
    assert moments and all(m.sharding.spec == wi.sharding.spec for m in moments)


def test_label_smoothing_and_z_loss_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]])
    total, tokens = losses.cross_entropy_sums(logits, targets, weights, 0.1, 1e-2)
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    log_probs = logits - log_z[..., None]
    soft = np.full((2, 3, 7), 0.1 / 6)
    np.put_along_axis(soft, targets[..., None], 0.9, -1)
    entropy = -(0.9 * np.log(0.9) + 6 * (0.1 / 6) * np.log(0.1 / 6))
    per_token = -(soft * log_probs).sum(-1) - entropy + 1e-2 * log_z**2
    assert float(tokens) == 3
    np.testing.assert_allclose(float(total), (per_token * weights).sum(), rtol=1e-5)


def test_a_perfect_prediction_scores_zero_with_label_smoothing():
    targets = np.array([[2, 3]])
    logits = np.log(np.where(np.eye(5)[targets] == 1, 0.9, 0.1 / 4))
    total, _ = losses.cross_entropy_sums(logits, targets, np.ones((1, 2)), label_smoothing=0.1)
    assert abs(float(total)) < 1e-5


def test_loss_normalizing_factor_divides_the_sums_instead_of_the_token_count():
    _, _, by_tokens = _one_step("standard")
    _, _, by_factor = _one_step("standard", loss_normalizing_factor=100.0)
    tokens = by_tokens["tokens/label"]
    assert by_factor["loss"] == pytest.approx(by_tokens["loss"] * tokens / 100.0, rel=1e-5)


def test_modes_and_alpha_are_checked():
    assert losses.task_weights("dsbs", 0.25) == {"label": 0.25, "rationale": 0.75}
    assert losses.task_weights("cot", 0.25) == {"label": 1.0}
    with pytest.raises(ValueError, match="MODE must be one of"):
        losses.task_weights("distill", 0.5)
    with pytest.raises(ValueError, match="ALPHA"):
        losses.task_weights("dsbs", 1.5)


def test_adamw_decays_linearly_to_zero_and_adafactor_is_constant():
    adamw = optimizers.adamw(total_steps=100, learning_rate=5e-5)
    assert [float(adamw.learning_rate(s)) for s in (0, 50, 100)] == pytest.approx(
        [5e-5, 2.5e-5, 0.0]
    )
    warm = optimizers.adamw(total_steps=100, learning_rate=1e-4, warmup_steps=10)
    assert float(warm.learning_rate(5)) == pytest.approx(5e-5)
    assert float(warm.learning_rate(10)) == pytest.approx(1e-4)
    adafactor = optimizers.adafactor()
    assert float(adafactor.learning_rate(0)) == float(adafactor.learning_rate(10**6)) == 1e-3
    _, _, metrics = _one_step("dsbs", optimizer=adafactor)
    assert np.isfinite(metrics["loss"]) and metrics["learning_rate"] == pytest.approx(1e-3)


def test_adafactor_factored_rows_are_split_like_the_dimension_they_keep():
    # Factored from 8 rows on, so that the tiny model's kernels are (the default is 128).
    adafactor = optimizers.Optimizer(
        optax.adafactor(1e-3, min_dim_size_to_factor=8), optax.constant_schedule(1e-3)
    )
    expected_losses, expected_params, _ = _three_steps(ONE_DEVICE, "dsbs", optimizer=adafactor)
    step_losses, params, state = _three_steps("fsdp 2 x model 2", "dsbs", optimizer=adafactor)
    np.testing.assert_allclose(step_losses, expected_losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        params,
        expected_params,
    )
    # Adafactor keeps a [embed, mlp] kernel's second moments as a row and a column.
    (factored,) = [
        leaf
        for leaf in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "v_row"))
        if hasattr(leaf, "v_row")
    ]
    kernel = ("encoder", "layers_0", "mlp", "wi_0", "kernel")
    v_row, v_col = (functools.reduce(operator.getitem, kernel, tree) for tree in factored[1:3])
    P = jax.sharding.PartitionSpec
    assert (v_row.shape, v_row.sharding.spec) == ((CONFIG.emb_dim,), P("fsdp"))
    assert (v_col.shape, v_col.sharding.spec) == ((CONFIG.mlp_dim,), P("model"))


def test_batch_rows_not_divisible_by_microbatches_fail_clearly():
    with pytest.raises(ValueError, match="does not split into 3 microbatches"):
        _one_step("dsbs", microbatches=3)
