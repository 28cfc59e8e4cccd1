"""Token cross-entropy for one task, and the distilling step-by-step blend of tasks.

Each task's loss is a sum over its target tokens, returned with the number of tokens it
covers. Summing (not averaging) lets microbatches of one batch add up exactly: the caller
divides by the whole batch's token count, so the blended loss is

    alpha * label_loss + (1 - alpha) * rationale_loss,  task_loss = sum / tokens,

the reference's per-task token mean, whatever the microbatching or packing. T5X's
alternative, a fixed `loss_normalizing_factor` in place of the token count, is a binding.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

MODES = ("standard", "dsbs", "cot")
LABEL, RATIONALE = "label", "rationale"


def task_weights(mode: str, alpha: float) -> dict[str, float]:
    """Each task's weight in the blended loss. `standard` trains on the label task alone
    (gold labels: finetuning; teacher labels: standard distillation); `cot` trains on the
    chain-of-thought task, which the trainer feeds in the label task's place."""
    if mode not in MODES:
        raise ValueError(f"MODE must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "dsbs":
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ALPHA must be in [0, 1], got {alpha}")
        return {LABEL: alpha, RATIONALE: 1.0 - alpha}
    return {LABEL: 1.0}


def cross_entropy_sums(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Sum over tokens of `weights * cross-entropy` (plus T5X's z-loss, `z_loss * log(Z)^2`),
    and the sum of weights. Label smoothing moves `label_smoothing` of the target's mass
    evenly onto the other tokens and subtracts that distribution's entropy, as T5X does, so
    a perfect prediction scores 0."""
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        # Soft targets, `low` on every token plus `confidence - low` on the target, written
        # without a [batch, length, vocab] one-hot; minus their entropy.
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        cross_entropy = -(confidence - low) * target_log_prob - low * jnp.sum(log_probs, -1)
        cross_entropy += confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low)
    else:
        cross_entropy = -target_log_prob
    loss = cross_entropy + z_loss * jnp.square(log_z)
    weights = weights.astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(weights)


def blend(
    sums: Mapping[str, jax.Array],
    normalizers: Mapping[str, jax.Array],
    weights: Mapping[str, float],
) -> jax.Array:
    """`sum_task weight * sum / normalizer`: the blended loss from per-task sums."""
    return sum(weights[task] * sums[task] / normalizers[task] for task in weights)
