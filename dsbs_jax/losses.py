"""Token cross-entropy for one task, the distilling step-by-step blend of tasks, and the
knowledge-distillation terms that can join it.

Each task's loss is a sum over its target tokens, returned with the number of tokens it
covers. Summing (not averaging) lets microbatches of one batch add up exactly: the caller
divides by the whole batch's token count, so the blended loss is

    alpha * label_loss + (1 - alpha) * rationale_loss,  task_loss = sum / tokens,

the reference's per-task token mean, whatever the microbatching or packing. T5X's
alternative, a fixed `loss_normalizing_factor` in place of the token count, is a binding.

A same-family teacher adds two terms, returned the same way (a weighted sum and the sum
of weights) and normalised by their own token counts:

    loss = alpha * label + (1 - alpha) * rationale + beta * kd + gamma * hidden,

where `kd` is the token KL between teacher and student (`kl_sums` with the teacher's full
logits, `topk_kl_sums` with its top-k log-probabilities stored offline) over the label
targets, the rationale targets or both (add the tasks' sums and their weights), and
`hidden` the distance between chosen student and teacher hidden states
(`hidden_state_sums`). `blend` combines them like tasks: `{"kd": beta, "hidden": gamma}`
next to the task weights. The teacher is a constant: no gradient reaches it.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

MODES = ("standard", "dsbs", "cot")
LABEL, RATIONALE = "label", "rationale"
KL_DIRECTIONS = ("forward", "reverse")
HIDDEN_KINDS = ("mse", "cosine")


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


def check_kl_options(temperature: float, direction: str) -> None:
    """Raise a ValueError for an unknown KL direction or a temperature not above 0."""
    if direction not in KL_DIRECTIONS:
        raise ValueError(
            f"KL direction must be one of {', '.join(KL_DIRECTIONS)}, got {direction!r}"
        )
    if not temperature > 0:
        raise ValueError(f"KL temperature must be positive, got {temperature}")


def check_hidden_kind(kind: str) -> None:
    """Raise a ValueError for an unknown hidden-state distance."""
    if kind not in HIDDEN_KINDS:
        raise ValueError(
            f"hidden-state loss must be one of {', '.join(HIDDEN_KINDS)}, got {kind!r}"
        )


def _token_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float, direction: str
) -> jax.Array:
    """`T^2 * KL` per position between the softmaxes at temperature T over the last axis:
    KL(teacher || student) forward, KL(student || teacher) reverse. Log-probabilities come
    from `log_softmax`, so no logarithm of an underflowed probability is ever taken."""
    log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    log_q = jax.nn.log_softmax(
        jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1
    )
    # KL(a || b) = sum a * (log a - log b).
    log_a, log_b = (log_q, log_p) if direction == "forward" else (log_p, log_q)
    return temperature**2 * jnp.sum(jnp.exp(log_a) * (log_a - log_b), axis=-1)


def kl_sums(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    weights: jax.Array,
    temperature: float = 1.0,
    direction: str = "forward",
) -> tuple[jax.Array, jax.Array]:
    """Sum over tokens of `weights * T^2 * KL` between softmax(teacher / T) and
    softmax(student / T), and the sum of weights.

    `forward` is KL(teacher || student), the usual distillation loss: mean-seeking, the
    student spreads its mass over everything the teacher finds plausible. `reverse` is
    KL(student || teacher): mode-seeking, the student concentrates on the teacher's likely
    tokens. The T^2 factor (Hinton et al., 2015) keeps the gradients' scale independent of
    T. Logits are `[batch, length, vocab]` (any float dtype; computed in float32), weights
    `[batch, length]` with 0 on padding. The teacher's logits are constants.
    """
    check_kl_options(temperature, direction)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {student_logits.shape} and teacher logits "
            f"{teacher_logits.shape} differ in shape (same vocabulary and targets expected)"
        )
    kl = _token_kl(student_logits, teacher_logits, temperature, direction)
    weights = weights.astype(jnp.float32)
    return jnp.sum(kl * weights), jnp.sum(weights)


def topk_kl_sums(
    student_logits: jax.Array,
    teacher_ids: jax.Array,
    teacher_logprobs: jax.Array,
    weights: jax.Array,
    temperature: float = 1.0,
    direction: str = "forward",
) -> tuple[jax.Array, jax.Array]:
    """`kl_sums` from the teacher's top-k tokens per position, as stored offline.

    `teacher_ids` (int) and `teacher_logprobs` (float) are `[batch, length, k]`: the
    teacher's k most likely tokens and their log-probabilities at T = 1. Both
    distributions are restricted to those k tokens and renormalised there,

        q_i ∝ exp(teacher_logprobs_i / T),  p_i ∝ exp(student_logits[teacher_ids_i] / T),

    and the loss is `T^2 * KL(q || p)` forward or `T^2 * KL(p || q)` reverse. With k equal
    to the vocabulary this is exactly `kl_sums` (a log-softmax's shift does not change the
    renormalised q). With k smaller it ignores the mass outside the top k, which for a
    confident teacher is small. That choice is forced: the stored log-probabilities say
    how much mass lies outside the top k but not how it is spread over the other tokens,
    so any tail would be invented; renormalising compares the two models only where the
    teacher's distribution is known, and the student's gradient pushes mass among the k
    tokens, not towards or away from them as a whole.

    Preconditions: no id repeats within a position (a repeated id would count twice).
    Padding positions (weight 0) may hold any ids and log-probabilities, even out of range
    or not finite: they are replaced before use, so they reach neither loss nor gradient.
    """
    check_kl_options(temperature, direction)
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(
            f"teacher ids {teacher_ids.shape} and log-probabilities "
            f"{teacher_logprobs.shape} differ in shape"
        )
    real = (weights != 0)[..., None]
    teacher_ids = jnp.where(real, teacher_ids, 0)
    teacher_logprobs = jnp.where(real, teacher_logprobs.astype(jnp.float32), 0.0)
    student_topk = jnp.take_along_axis(student_logits, teacher_ids, axis=-1)
    kl = _token_kl(student_topk, teacher_logprobs, temperature, direction)
    weights = weights.astype(jnp.float32)
    return jnp.sum(kl * weights), jnp.sum(weights)


def init_projection(key: jax.Array, student_width: int, teacher_width: int) -> jax.Array:
    """An initial `[student_width, teacher_width]` projection for `hidden_state_sums`,
    drawn like the model's kernels (truncated normal, variance 1 / student_width), so
    projected states start at the scale of the student's own."""
    init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    return init(key, (student_width, teacher_width), jnp.float32)


def hidden_state_sums(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    weights: jax.Array,
    kind: str = "mse",
    projection: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Sum over tokens of `weights * distance(student, teacher)` between hidden states
    `[batch, length, width]`, and the sum of weights.

    `mse` is the mean over the width of the squared difference, `cosine` is 1 - cosine
    similarity (blind to scale, for teachers whose states are much larger). `projection`,
    `[student_width, teacher_width]` and learned with the student (see `init_projection`),
    first maps the student's states to the teacher's width; it is needed when the widths
    differ. The teacher's states are constants. Computed in float32.
    """
    check_hidden_kind(kind)
    student_width, teacher_width = student_hidden.shape[-1], teacher_hidden.shape[-1]
    student = student_hidden.astype(jnp.float32)
    if projection is not None:
        if projection.shape != (student_width, teacher_width):
            raise ValueError(
                f"projection has shape {projection.shape}, expected (student width "
                f"{student_width}, teacher width {teacher_width})"
            )
        student = jnp.dot(student, projection.astype(jnp.float32))
    elif student_width != teacher_width:
        raise ValueError(
            f"student width {student_width} differs from teacher width {teacher_width}: "
            "pass a projection of shape (student width, teacher width)"
        )
    teacher = jax.lax.stop_gradient(teacher_hidden).astype(jnp.float32)
    if kind == "mse":
        distance = jnp.mean(jnp.square(student - teacher), axis=-1)
    else:
        distance = 1.0 - jnp.sum(_unit(student) * _unit(teacher), axis=-1)
    weights = weights.astype(jnp.float32)
    return jnp.sum(distance * weights), jnp.sum(weights)


def _unit(x: jax.Array, epsilon: float = 1e-8) -> jax.Array:
    """`x / max(|x|, epsilon)` along the last axis: finite, with finite gradients, at 0."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), epsilon**2))
