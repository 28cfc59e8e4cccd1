"""Greedy decoding throughput on CPU: `dsbs_jax.decoding.generate` versus Hugging Face's
`T5ForConditionalGeneration.generate`, same weights, float32, in sequences per second.

Decoding speed depends on how many tokens get generated, and a random model may emit EOS at
any step, so both sides are made to produce every one of the `--new` tokens: the EOS column
of the output projection is zeroed, which pins the EOS logit at exactly 0 while the best of
the other ~32k logits is positive (there is no bias, so no fixed negative column could
guarantee the same), and Hugging Face additionally gets `min_new_tokens`. The script checks
afterwards that neither side emitted EOS, and reports how often the two greedy outputs agree
(identical weights: they should, up to float near-ties).

    python bench/decode.py [--size small|tiny] [--batch 32] [--inputs 64] [--new 64] [--runs 5]
"""

import argparse

import jax
import numpy as np
import torch
from common import (
    SIZES,
    Params,
    hf_greedy,
    init_params,
    log,
    random_tokens,
    setup_torch,
    thread_counts,
    time_in_turns,
    to_hf,
)
from flax import traverse_util

from dsbs_jax.decoding import EOS_ID, generate

HEAD = ("decoder", "logits_dense", "kernel")


def without_eos(params: Params) -> Params:
    """A copy of `params` whose EOS logit is always exactly 0 (its head column is zeroed)."""
    flat = traverse_util.flatten_dict(params)
    flat[HEAD] = flat[HEAD].at[:, EOS_ID].set(0.0)
    return traverse_util.unflatten_dict(flat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=64, help="encoder tokens per example")
    parser.add_argument("--new", type=int, default=64, help="tokens to generate per example")
    parser.add_argument("--runs", type=int, default=5, help="timed runs each (after a warm-up)")
    args = parser.parse_args()
    setup_torch()
    config = SIZES[args.size]

    log(f"building {args.size} models")
    params = without_eos(init_params(config))
    hf_model = to_hf(config, params)
    tokens = random_tokens(3, args.batch, args.inputs, config.vocab_size)
    input_ids = torch.from_numpy(tokens).long()
    attention_mask = torch.ones_like(input_ids)

    def ours() -> np.ndarray:
        return np.asarray(generate(config, params, tokens, max_length=args.new))

    def theirs() -> np.ndarray:
        return hf_greedy(hf_model, input_ids, attention_mask, args.new, min_new_tokens=args.new)

    log("compiling ours and checking both outputs")
    out_ours, out_theirs = ours(), theirs()
    expected = (args.batch, args.new)
    for name, out in (("ours", out_ours), ("hf", out_theirs)):
        if out.shape != expected or (out == EOS_ID).any():
            raise SystemExit(
                f"{name}: shape {out.shape} (want {expected}), EOS present: "
                f"{bool((out == EOS_ID).any())}: not a like-for-like comparison"
            )
    same_tokens = float((out_ours == out_theirs).mean())
    same_rows = float((out_ours == out_theirs).all(axis=1).mean())
    log(f"both {expected}, no EOS; agreement: {same_tokens:.1%} of tokens, {same_rows:.1%} of rows")

    log("timing, ours and HF in turns")
    timings = time_in_turns({"ours": ours, "hf": theirs}, warmup=1, runs=args.runs)
    log(f"ours: {timings['ours']}; hf: {timings['hf']}")
    seconds_ours, seconds_theirs = timings["ours"].median, timings["hf"].median
    print(
        f"greedy decode size={args.size} batch={args.batch} inputs={args.inputs} "
        f"new={args.new} {thread_counts()} jax={jax.__version__} torch={torch.__version__} | "
        f"ours {args.batch / seconds_ours:.2f} seq/s ({seconds_ours:.3f} s/batch) | "
        f"hf {args.batch / seconds_theirs:.2f} seq/s ({seconds_theirs:.3f} s/batch) | "
        f"ours/hf {seconds_theirs / seconds_ours:.2f}x | "
        f"all {args.new} tokens on both sides, greedy outputs agree on {same_tokens:.1%} "
        f"of tokens ({same_rows:.1%} of rows)"
    )


if __name__ == "__main__":
    main()
