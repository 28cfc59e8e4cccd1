"""The model as the training steps initialise and apply it: boxed parameters (with their
logical axes, for placement), and one task's features in, logits out, with the outputs of
chosen layers when a distillation compares hidden states."""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsbs_jax.models.network import T5

# What the model reads of a task's features. Packed rows' positions are left out on
# purpose: T5 uses positions only in its relative attention bias, through the distance
# between two tokens of the same segment, which the columns of a row give as well (a
# segment's tokens are consecutive and cross-segment pairs are masked). Without them the
# bias is one `[heads, q, k]` table for all rows instead of one per row, a large part of a
# packed step's attention cost (`tests/test_packing.py` checks a packed step equals the
# padded one).
MODEL_INPUTS = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "encoder_segment_ids",
    "decoder_segment_ids",
)


def init_boxed(model: T5, key: jax.Array) -> Any:
    """A model's parameters with their logical axes (boxed), from a one-token input."""
    tokens = jnp.ones((1, 1), jnp.int32)
    return model.init(key, tokens, tokens)["params"]


def forward(
    model: T5,
    params: Any,
    features: Mapping[str, jax.Array],
    dropout_rng: jax.Array | None = None,
    layers: tuple[tuple[str, int], ...] = (),
) -> tuple[jax.Array, list[jax.Array]]:
    """Logits, and the outputs of the (side, index) `layers` (Flax's captured
    intermediates of those layers' calls; the rest are never kept)."""
    inputs = {name: features[name] for name in MODEL_INPUTS if name in features}
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    variables = {"params": params}
    enable_dropout = dropout_rng is not None
    if not layers:
        return model.apply(variables, **inputs, enable_dropout=enable_dropout, rngs=rngs), []
    wanted = {(side, f"layers_{index}") for side, index in layers}

    def capture(module: nn.Module, method: str) -> bool:
        path = module.scope.path if module.scope else ()
        return method == "__call__" and tuple(path[-2:]) in wanted

    logits, state = model.apply(
        variables,
        **inputs,
        enable_dropout=enable_dropout,
        rngs=rngs,
        capture_intermediates=capture,
        mutable=["intermediates"],
    )
    captured = state["intermediates"]
    return logits, [captured[side][f"layers_{i}"]["__call__"][0] for side, i in layers]
