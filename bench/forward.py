"""Training-step throughput on CPU: our JAX T5 versus Hugging Face's PyTorch T5, float32.

One step is the forward pass, the mean token cross-entropy of the logits against the targets,
and the gradient of that loss with respect to every parameter (no optimizer update). Ours is
`jax.jit(jax.value_and_grad(loss))`; theirs is `T5ForConditionalGeneration` plus
`loss.backward()`, with the same weights and the same loss computed from the logits. The figure
that matters for training on this machine is tokens/s (input + target tokens per second).

FLOPs per step come from XLA's `cost_analysis()` of our compiled step (an analytic estimate is
printed beside it as a check). MFU divides achieved FLOP/s by a *measured* peak: the best of a
jitted 2048x2048 `jnp.dot` and a `torch.matmul` of the same size, not a datasheet number.

    python bench/forward.py [--size small|tiny] [--batch 8] [--inputs 128] [--targets 64]
                            [--steps 7]
"""

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
import transformers
from common import (
    SIZES,
    build_models,
    log,
    matmul_peak_gflops,
    random_tokens,
    setup_torch,
    shift_right,
    thread_counts,
    time_in_turns,
)

from dsbs_jax.models import T5, T5Config

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # encoder inputs, decoder inputs, targets


def make_batch(config: T5Config, batch: int, inputs: int, targets: int) -> Batch:
    """Random inputs and targets; the decoder sees the targets shifted right behind token 0."""
    encoder_tokens = random_tokens(1, batch, inputs, config.vocab_size)
    target_tokens = random_tokens(2, batch, targets, config.vocab_size)
    return encoder_tokens, shift_right(target_tokens), target_tokens


def analytic_flops(config: T5Config, batch: int, inputs: int, targets: int) -> float:
    """2 FLOPs per multiply-add of every matmul (weights and attention), x3 for forward+backward."""
    c = config
    e, j, m = c.emb_dim, c.joined_kv_dim, c.mlp_dim
    encoder_layer = 4 * e * j + 3 * e * m  # q, k, v, out; wi_0, wi_1, wo
    decoder_layer = 4 * e * j + 2 * e * j + 3 * e * m  # self-attention; cross q, out; mlp
    cross_keys_values = 2 * e * j  # per encoder token, in every decoder layer
    weight_macs = inputs * (
        c.num_encoder_layers * encoder_layer + c.num_decoder_layers * cross_keys_values
    )
    weight_macs += targets * (c.num_decoder_layers * decoder_layer + e * c.vocab_size)
    # q.k and weights.v: 2 * head_dim * heads MACs per (query, key) pair.
    pairs = c.num_encoder_layers * inputs**2 + c.num_decoder_layers * (
        targets**2 + targets * inputs
    )
    return 3 * 2 * batch * (weight_macs + 2 * j * pairs)


def jax_step(config: T5Config, params, batch: Batch) -> tuple[Callable[[], float], float]:
    """Our compiled training step (returns the loss) and XLA's FLOP count for it."""
    model = T5(config)

    def loss_fn(params, encoder_tokens, decoder_tokens, targets):
        logits = model.apply({"params": params}, encoder_tokens, decoder_tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    arrays = [jnp.asarray(x) for x in batch]
    compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(params, *arrays).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost

    def step() -> float:
        loss, grads = jax.block_until_ready(compiled(params, *arrays))
        return float(loss)

    return step, float(cost["flops"])


def torch_step(model: transformers.T5ForConditionalGeneration, batch: Batch) -> Callable[[], float]:
    """Hugging Face's training step: logits, the same mean cross-entropy, `loss.backward()`."""
    encoder_tokens, decoder_tokens, targets = (torch.from_numpy(x).long() for x in batch)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=encoder_tokens, decoder_input_ids=decoder_tokens).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=128, help="encoder tokens per example")
    parser.add_argument("--targets", type=int, default=64, help="decoder tokens per example")
    parser.add_argument("--steps", type=int, default=7, help="timed steps each (after a warm-up)")
    args = parser.parse_args()
    setup_torch()
    config = SIZES[args.size]
    tokens_per_step = args.batch * (args.inputs + args.targets)

    log("measuring matmul peak")
    peaks = matmul_peak_gflops()
    peak_jax, peak_torch = peaks["jnp.dot"], peaks["torch.matmul"]
    peak = max(peak_jax, peak_torch)

    log(f"building {args.size} models")
    params, hf_model = build_models(config)
    batch = make_batch(config, args.batch, args.inputs, args.targets)

    log("compiling ours")
    ours, flops = jax_step(config, params, batch)
    theirs = torch_step(hf_model, batch)
    loss_ours, loss_theirs = ours(), theirs()
    log(f"loss ours={loss_ours:.6f} torch={loss_theirs:.6f} (same weights: should agree to ~1e-5)")

    log("timing, ours and torch in turns")
    timings = time_in_turns({"ours": ours, "torch": theirs}, warmup=1, runs=args.steps)
    seconds_ours, seconds_theirs = timings["ours"].median, timings["torch"].median
    log(f"ours: {timings['ours']}; torch: {timings['torch']}")

    analytic = analytic_flops(config, args.batch, args.inputs, args.targets)
    print(
        f"forward+backward size={args.size} batch={args.batch} inputs={args.inputs} "
        f"targets={args.targets} {thread_counts()} | "
        f"ours {tokens_per_step / seconds_ours:.0f} tok/s ({seconds_ours:.3f} s/step) | "
        f"torch {tokens_per_step / seconds_theirs:.0f} tok/s ({seconds_theirs:.3f} s/step) | "
        f"ours/torch {seconds_theirs / seconds_ours:.2f}x | "
        f"{flops / 1e9:.1f} GFLOP/step (XLA cost_analysis; "
        f"analytic matmul-only {analytic / 1e9:.1f}) | "
        f"peak jnp.dot {peak_jax:.0f} GFLOP/s, torch.matmul {peak_torch:.0f} GFLOP/s | "
        f"MFU vs {peak:.0f}: ours {flops / seconds_ours / 1e9 / peak:.1%}, "
        f"torch {flops / seconds_theirs / 1e9 / peak:.1%}"
    )


if __name__ == "__main__":
    main()
