"""The optimisers a run binds in gin: the paper's AdamW and T5X's finetuning Adafactor.

Each returns an optax transformation whose learning rate is a schedule of the step, so the
trainer can log it (`learning_rate(step)`), with global-norm gradient clipping in front.
"""

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax transformation, the learning-rate schedule inside it (for logging), and the
    settings that made both (`run.json` records them: a run resumed with others is refused)."""

    transform: optax.GradientTransformation
    learning_rate: optax.Schedule
    settings: dict = dataclasses.field(default_factory=dict)


def linear_decay(learning_rate: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """Hugging Face's default schedule, which the reference trained with: linear warmup
    (none by default), then linear decay to 0 at `total_steps`."""
    decay = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))
    if not warmup_steps:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def adamw(
    total_steps: int,
    learning_rate: float = 5e-5,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_grad_norm: float | None = 1.0,
) -> Optimizer:
    """The paper's optimiser: the Hugging Face Trainer's AdamW defaults (lr 5e-5, linear
    decay to 0, no warmup, no weight decay, gradients clipped to global norm 1)."""
    settings = {"name": "adamw", **locals()}
    schedule = linear_decay(learning_rate, total_steps, warmup_steps)
    transform = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return Optimizer(_clipped(transform, max_grad_norm), schedule, settings)


def adafactor(
    learning_rate: float = 1e-3,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    max_grad_norm: float | None = None,
) -> Optimizer:
    """T5X's finetuning optimiser (`t5_1_1` finetune gins): Adafactor, factored second
    moments, no momentum, update clipping at 1, parameter-scaled steps, constant lr 1e-3.
    Its memory is about that of the parameters: the choice for XL and XXL students."""
    settings = {"name": "adafactor", **locals()}
    schedule = optax.constant_schedule(learning_rate)
    transform = optax.adafactor(
        schedule,
        decay_rate=decay_rate,
        decay_offset=0,
        multiply_by_parameter_scale=True,
        clipping_threshold=clipping_threshold,
        momentum=None,
        factored=True,
    )
    return Optimizer(_clipped(transform, max_grad_norm), schedule, settings)


def _clipped(
    transform: optax.GradientTransformation, max_grad_norm: float | None
) -> optax.GradientTransformation:
    if max_grad_norm is None:
        return transform
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), transform)
