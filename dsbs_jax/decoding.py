"""Autoregressive decoding for the T5 model: greedy, beam search and sampling.

The encoder runs once, every cross-attention's keys and values are projected once, and the
decoder reads and writes an explicit `[batch, heads, length, head_dim]` key/value cache. The
whole loop is one `lax.while_loop` under `jit`, which stops as soon as every row (or, for
beam search, every batch item) is finished: there is no per-token Python.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from dsbs_jax.models import T5, T5Config, init_cache

EOS_ID = 1
PAD_ID = 0
NEG_INF = -1.0e9
METHODS = ("greedy", "beam", "sample")


def generate(
    config: T5Config,
    params: Any,
    encoder_input_tokens: jax.Array,
    max_length: int,
    method: str = "greedy",
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Decode up to `max_length` tokens per row; returns ids `[batch, max_length]`, 0 after EOS.

    `beam` keeps `num_beams` hypotheses and ranks finished ones by
    `sum(log p) / length ** length_penalty`, as Hugging Face's beam search does. `sample`
    draws from `softmax(logits / temperature)` restricted to the `top_k` most likely tokens
    (0: all) and to the smallest set whose probability reaches `top_p`.
    """
    if method not in METHODS:
        raise ValueError(f"generate: method {method!r} is not one of {METHODS}")
    if method == "sample" and temperature <= 0:
        raise ValueError(f"generate: sampling needs temperature > 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
    if not 0 <= top_k <= config.vocab_size:
        raise ValueError(f"generate: top_k must be in [0, {config.vocab_size}], got {top_k}")
    if max_length < 1 or num_beams < 1:
        raise ValueError(
            f"generate: max_length ({max_length}) and num_beams ({num_beams}) must be >= 1"
        )
    if rng is None:
        rng = jax.random.PRNGKey(0)
    return _generate_jit(
        params,
        jnp.asarray(encoder_input_tokens, jnp.int32),
        rng,
        config=config,
        max_length=max_length,
        method=method,
        num_beams=num_beams,
        length_penalty=float(length_penalty),
        temperature=float(temperature),
        top_k=top_k,
        top_p=float(top_p),
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "max_length",
        "method",
        "num_beams",
        "length_penalty",
        "temperature",
        "top_k",
        "top_p",
    ),
)
def _generate_jit(params, encoder_tokens, rng, *, config, max_length, method, num_beams, **options):
    if method == "beam":
        return _beam_search(
            config, params, encoder_tokens, max_length, num_beams, options["length_penalty"]
        )
    if method == "greedy":
        sampler = _argmax
    else:
        sampler = functools.partial(
            _sample, **{key: options[key] for key in ("temperature", "top_k", "top_p")}
        )
    return _greedy_or_sample(config, params, encoder_tokens, max_length, rng, sampler)


def _argmax(rng: jax.Array, logits: jax.Array) -> jax.Array:
    """The first index of the row maximum, as `jnp.argmax`, but as two plain reductions:
    XLA's CPU argmax (a variadic reduce) took 2 ms per step for a 32128-token vocabulary."""
    del rng  # greedy decoding shares the sampler's signature
    vocab = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    is_max = logits == jnp.max(logits, axis=-1, keepdims=True)
    return jnp.min(jnp.where(is_max, vocab, logits.shape[-1]), axis=-1)


class _Decoder:
    """The model's decode step bound to params and one encoded batch."""

    def __init__(self, config: T5Config, params: Any, encoder_tokens: jax.Array):
        self.model = T5(config)
        self.variables = {"params": params}
        self.encoder_tokens = encoder_tokens
        encoded = self.model.apply(self.variables, encoder_tokens, method=T5.encode)
        self.cross = self.model.apply(self.variables, encoded, method=T5.cross_keys_values)

    def step(self, token: jax.Array, index: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
        return self.model.apply(
            self.variables,
            token,
            index,
            cache,
            self.cross,
            self.encoder_tokens,
            method=T5.decode_step,
        )


def _sample(
    rng: jax.Array, logits: jax.Array, temperature: float, top_k: int, top_p: float
) -> jax.Array:
    logits = logits / temperature
    if top_k > 0:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token while the probability mass before it is still below top_p.
        keep = (jnp.cumsum(probs, axis=-1) - probs < top_p).at[:, 0].set(True)
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, NEG_INF, logits)
    return jax.random.categorical(rng, logits, axis=-1)


def _greedy_or_sample(config, params, encoder_tokens, max_length, rng, sampler):
    batch = encoder_tokens.shape[0]
    decoder = _Decoder(config, params, encoder_tokens)

    def not_done(state):
        index, _, _, _, done, _ = state
        return (index < max_length) & ~jnp.all(done)

    def step(state):
        index, tokens, last, cache, done, rng = state
        logits, cache = decoder.step(last, index, cache)
        rng, step_rng = jax.random.split(rng)
        next_token = jnp.where(done, PAD_ID, sampler(step_rng, logits)).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, next_token[:, None], index, 1)
        return index + 1, tokens, next_token, cache, done | (next_token == EOS_ID), rng

    state = (
        jnp.array(0),
        jnp.zeros((batch, max_length), jnp.int32),
        jnp.full((batch,), PAD_ID, jnp.int32),
        init_cache(config, batch, max_length),
        jnp.zeros((batch,), bool),
        rng,
    )
    return jax.lax.while_loop(not_done, step, state)[1]


def _gather_beams(x: jax.Array, indices: jax.Array) -> jax.Array:
    """`x [batch, beams, ...]`, `indices [batch, k]` -> `[batch, k, ...]`."""
    return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def _beam_search(config, params, encoder_tokens, max_length, num_beams, length_penalty):
    """Beam search with Hugging Face's scoring and stopping rules (`early_stopping=False`).

    Each step takes the best `2 * num_beams` continuations over all beams: those ending in
    EOS (or reaching `max_length`) among the first `num_beams` become finished candidates,
    scored with the length penalty; the best `num_beams` others keep running. A batch item
    stops once no running beam's score can beat its worst finished hypothesis.
    """
    batch = encoder_tokens.shape[0]
    beams, candidates = num_beams, 2 * num_beams
    flat_tokens = jnp.repeat(encoder_tokens, beams, axis=0)
    decoder = _Decoder(config, params, flat_tokens)

    def not_done(state):
        index, *_, open_items = state
        return (index < max_length) & jnp.any(open_items)

    def step(state):
        index, seqs, scores, cache, fin_seqs, fin_scores, fin_flags, open_items = state
        last = jax.lax.dynamic_index_in_dim(seqs, index - 1, 2, keepdims=False)
        last = jnp.where(index == 0, PAD_ID, last).reshape(batch * beams)
        logits, cache = decoder.step(last, index, cache)
        log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, beams, -1)
        vocab = log_probs.shape[-1]
        total = (log_probs + scores[:, :, None]).reshape(batch, beams * vocab)
        cand_scores, cand_ids = jax.lax.top_k(total, candidates)
        cand_beams, cand_tokens = cand_ids // vocab, (cand_ids % vocab).astype(jnp.int32)
        cand_seqs = _gather_beams(seqs, cand_beams)
        cand_seqs = jax.lax.dynamic_update_slice_in_dim(
            cand_seqs, cand_tokens[:, :, None], index, 2
        )
        hits_stop = (cand_tokens == EOS_ID) | (index + 1 >= max_length)

        running_scores = cand_scores + jnp.where(hits_stop, NEG_INF, 0.0)
        keep = jax.lax.top_k(running_scores, beams)[1]
        seqs, scores = _gather_beams(cand_seqs, keep), _gather_beams(running_scores, keep)
        # Reorder along the beam axis only, so a batch-sharded cache stays where it is.
        parents = _gather_beams(cand_beams, keep)
        cache = jax.tree.map(
            lambda x: _gather_beams(x.reshape(batch, beams, *x.shape[1:]), parents).reshape(
                x.shape
            ),
            cache,
        )

        just_finished = hits_stop & (jnp.arange(candidates) < beams)[None]
        penalised = cand_scores / ((index + 1.0) ** length_penalty)
        penalised += jnp.where(just_finished & open_items[:, None], 0.0, NEG_INF)
        merged_scores = jnp.concatenate([fin_scores, penalised], axis=1)
        best = jax.lax.top_k(merged_scores, beams)[1]
        fin_seqs = _gather_beams(jnp.concatenate([fin_seqs, cand_seqs], axis=1), best)
        fin_flags = _gather_beams(jnp.concatenate([fin_flags, just_finished], axis=1), best)
        fin_scores = _gather_beams(merged_scores, best)

        best_running = scores[:, 0] / ((index + 1.0) ** length_penalty)
        worst_finished = jnp.where(fin_flags, jnp.min(fin_scores, axis=1, keepdims=True), NEG_INF)
        open_items &= jnp.any(best_running[:, None] > worst_finished, axis=1)
        return index + 1, seqs, scores, cache, fin_seqs, fin_scores, fin_flags, open_items

    empty_seqs = jnp.zeros((batch, beams, max_length), jnp.int32)
    first_beam_only = jnp.where(jnp.arange(beams) == 0, 0.0, NEG_INF)
    state = (
        jnp.array(0),
        empty_seqs,
        jnp.broadcast_to(first_beam_only, (batch, beams)),
        init_cache(config, batch * beams, max_length),
        empty_seqs,
        jnp.full((batch, beams), NEG_INF),
        jnp.zeros((batch, beams), bool),
        jnp.ones((batch,), bool),
    )
    return jax.lax.while_loop(not_done, step, state)[4][:, 0]
