"""Helpers shared by the benchmarks: model sizes, one random model in JAX and PyTorch, timing.

The comparisons are only fair if both frameworks run the same architecture with the same
weights, so `build_models` initialises our Flax model once and hands exactly those weights to
Hugging Face's `T5ForConditionalGeneration` through `dsbs_jax.checkpoints.save_hf`.

PyTorch and transformers are imported only by the helpers that use them, so that scripts
timing our side alone (`--no-torch`) run where torch is not installed (GPU and TPU hosts).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import meta

import gin
from dsbs_jax import gin_utils
from dsbs_jax.checkpoints import hf_config_dict, save_hf
from dsbs_jax.models import T5, T5Config

if TYPE_CHECKING:
    import transformers

Params = dict[str, Any]


def preset(name: str) -> T5Config:
    """A model size from `gin/models/`, the one place sizes are written down."""
    gin.clear_config()
    gin_utils.parse([f"models/{name}.gin"])
    config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    gin.clear_config()
    return config


SIZES: dict[str, T5Config] = {
    **{size: preset(f"t5_1_1_{size}") for size in ("small", "base", "large", "xl", "xxl")},
    # A few-second smoke-test size: checks that the script runs, says nothing about speed.
    "tiny": T5Config(
        vocab_size=512,
        emb_dim=64,
        num_heads=2,
        head_dim=32,
        mlp_dim=128,
        num_encoder_layers=2,
        num_decoder_layers=2,
    ),
}


def log(message: str) -> None:
    """Progress goes to stderr so that stdout holds only the result line."""
    print(message, file=sys.stderr, flush=True)


def setup_torch(threads: int | None = None) -> None:
    """Denormals are slow on x86 and a random model produces some: flush them, as asked.
    `threads` sets torch's intra-op threads (by default torch picks its own count)."""
    import torch

    torch.set_flush_denormal(True)
    if threads is not None:
        torch.set_num_threads(threads)


def cpu_cores() -> int:
    """The cores this process may run on: what XLA's CPU backend sizes its thread pool by."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def random_tokens(seed: int, batch: int, length: int, vocab_size: int) -> np.ndarray:
    """Token ids in [2, vocab): no padding (0) and no EOS (1), so every position counts."""
    return np.random.default_rng(seed).integers(2, vocab_size, (batch, length), dtype=np.int32)


def shift_right(targets: np.ndarray) -> np.ndarray:
    """Decoder inputs for teacher forcing: the targets shifted right behind start token 0."""
    return np.pad(targets[:, :-1], ((0, 0), (1, 0)))


def init_params(config: T5Config, seed: int = 0) -> Params:
    """Random float32 params of our model, unboxed from their logical-partitioning wrappers."""
    dummy = jnp.ones((1, 8), jnp.int32)
    variables = jax.jit(T5(config).init)(jax.random.PRNGKey(seed), dummy, dummy)
    return meta.unbox(variables)["params"]


def hf_config(config: T5Config) -> transformers.T5Config:
    """The Hugging Face config of the same architecture: T5.1.1 (gated-GELU, untied head)."""
    import transformers

    fields = hf_config_dict(config) | {
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "dropout_rate": config.dropout_rate,
    }
    return transformers.T5Config(**fields)


def to_hf(config: T5Config, params: Params) -> transformers.T5ForConditionalGeneration:
    """Hugging Face's PyTorch model holding exactly `params`, passed through safetensors."""
    import transformers

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model")
        save_hf(path, config, params)
        model = transformers.T5ForConditionalGeneration.from_pretrained(
            path, config=hf_config(config)
        )
    return model.eval()


def hf_greedy(
    model: transformers.T5ForConditionalGeneration,
    input_ids: Any,
    attention_mask: Any,
    max_new_tokens: int,
    min_new_tokens: int | None = None,
) -> np.ndarray:
    """Hugging Face's greedy `generate` under `torch.inference_mode()`, with T5's special
    ids: the generated ids `[batch, <= max_new_tokens]` without the decoder start token,
    0 after EOS (rows stop at EOS, the batch when every row has)."""
    import torch

    from dsbs_jax.decoding import EOS_ID, PAD_ID

    with torch.inference_mode():
        generated = model.generate(
            input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            decoder_start_token_id=PAD_ID,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
        )
    return generated[:, 1:].numpy()  # drop the decoder start token


def build_models(
    config: T5Config, seed: int = 0
) -> tuple[Params, transformers.T5ForConditionalGeneration]:
    """A random-init model as our params and as an HF PyTorch model with identical weights."""
    params = init_params(config, seed)
    return params, to_hf(config, params)


SETTLE_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the timed runs of one callable."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def __str__(self) -> str:
        low, high = min(self.seconds), max(self.seconds)
        return f"median {self.median:.3f} s of {len(self.seconds)}, range {low:.3f}-{high:.3f}"


def time_in_turns(fns: dict[str, Callable[[], Any]], warmup: int, runs: int) -> dict[str, Timing]:
    """Warm each callable up `warmup` times, then time `runs` rounds, one call of each per round.

    Taking turns rather than timing one callable after the other means that a burst of load
    from other processes on a shared machine hits every contender alike. A pause before each
    call lets the previous contender's worker threads (OpenMP spins after a parallel region)
    go idle, so that they do not steal the cores of the one being timed. Each `fn` must finish
    its work before returning: block on JAX results inside it.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(runs):
        for name, fn in fns.items():
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
        latest = ", ".join(f"{name} {s[-1]:.3f} s" for name, s in seconds.items())
        log(f"  round {i + 1}/{runs}: {latest}")
    return {name: Timing(tuple(s)) for name, s in seconds.items()}


def thread_counts() -> str:
    """How many threads each framework may use (JAX's CPU backend uses one per core)."""
    import torch

    return f"torch_threads={torch.get_num_threads()} cpus={os.cpu_count()}"


def matmul_peak_gflops(
    n: int = 2048, runs: int = 10, dtype: str = "float32", with_torch: bool = True
) -> dict[str, float]:
    """Measured GFLOP/s of an n x n matmul in `dtype`, by contender: a jitted `jnp.dot` and,
    `with_torch`, a `torch.matmul` of the same size. A CPU has no datasheet peak to divide
    by, so MFU on CPU is against the best of these."""
    flops = 2 * n**3
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    contenders = {"jnp.dot": lambda: dot(a, a).block_until_ready()}
    if with_torch:
        import torch

        t = torch.randn(n, n, dtype=getattr(torch, dtype))
        contenders["torch.matmul"] = lambda: torch.matmul(t, t)
    timings = time_in_turns(contenders, warmup=2, runs=runs)
    return {name: flops / timing.median / 1e9 for name, timing in timings.items()}
