"""The Flax T5.1.1 against HF transformers' PyTorch T5, and the model's own invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import serialization, traverse_util
from reference import hf_logits, make_hf_t5, random_batch, save_and_load
from tiny import tiny_config

from dsbs_jax.models import T5, T5Config

# Configurations the reference must agree on: default-like, unequal depths, d_kv != d/heads,
# non-default bucket counts and distances, padded rows.
HF_CASES = {
    "equal_depth": dict(),
    "deeper_decoder_odd_dkv": dict(num_layers=1, num_decoder_layers=3, d_kv=6),
    "buckets_and_distance": dict(
        relative_attention_num_buckets=8, relative_attention_max_distance=12
    ),
    "wide_heads": dict(d_model=24, d_kv=10, num_heads=3, num_decoder_layers=1),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_logits_match_hf(case, tmp_path):
    hf = make_hf_t5(**HF_CASES[case])
    config, params = save_and_load(hf, tmp_path)
    encoder, decoder = random_batch(0, 3, 40, 33, config.vocab_size, pad_from=(40, 17, 5))

    expected = hf_logits(hf, encoder, decoder)
    expected64 = hf_logits(hf.double(), encoder, decoder)
    ours = np.asarray(T5(config).apply({"params": params}, encoder, decoder))

    scale = np.abs(expected64).max()
    hf_own_error = np.abs(expected - expected64).max() / scale
    our_error = np.abs(ours - expected64).max() / scale
    assert our_error <= max(1e-5, 3 * hf_own_error), (our_error, hf_own_error)


def _init(config: T5Config, seed: int = 0):
    tokens = jnp.ones((1, 4), jnp.int32)
    return nn.meta.unbox(T5(config).init(jax.random.PRNGKey(seed), tokens, tokens)["params"])


def test_packed_equals_unpacked():
    """Two examples packed into one row give the same per-token logits as each alone."""
    config = tiny_config()
    params = _init(config)
    model = T5(config)
    rng = np.random.RandomState(1)
    enc_a, enc_b = rng.randint(2, 64, 7), rng.randint(2, 64, 5)
    dec_a, dec_b = rng.randint(2, 64, 4), rng.randint(2, 64, 6)
    dec_a[0] = dec_b[0] = 0

    def alone(enc, dec):
        return np.asarray(model.apply({"params": params}, enc[None], dec[None]))[0]

    def segments(*lengths):
        return np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[None]

    def positions(*lengths):
        return np.concatenate([np.arange(n) for n in lengths])[None]

    packed = np.asarray(
        model.apply(
            {"params": params},
            np.concatenate([enc_a, enc_b, [0, 0]])[None],
            np.concatenate([dec_a, dec_b])[None],
            encoder_segment_ids=np.concatenate([segments(7, 5)[0], [0, 0]])[None],
            decoder_segment_ids=segments(4, 6),
            encoder_positions=np.concatenate([positions(7, 5)[0], [0, 0]])[None],
            decoder_positions=positions(4, 6),
        )
    )[0]
    np.testing.assert_allclose(packed[:4], alone(enc_a, dec_a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[4:], alone(enc_b, dec_b), rtol=1e-5, atol=1e-5)


def test_parameter_tree_is_t5x_tree(shared_dir):
    """Names and shapes equal those of the real T5X checkpoint in ../shared/fixtures."""
    raw = (shared_dir / "fixtures/t5x/test_t5_tiny.checkpoint_0").read_bytes()
    target = serialization.msgpack_restore(raw)["optimizer"]["target"]
    theirs = {k: np.shape(v) for k, v in traverse_util.flatten_dict(target).items()}
    config = T5Config(
        vocab_size=32128,
        emb_dim=8,
        num_heads=4,
        head_dim=3,
        mlp_dim=16,
        num_encoder_layers=2,
        num_decoder_layers=2,
    )
    ours = {k: v.shape for k, v in traverse_util.flatten_dict(_init(config)).items()}
    assert ours == theirs


def test_every_parameter_has_logical_axes():
    tokens = jnp.ones((1, 4), jnp.int32)
    boxed = T5(tiny_config()).init(jax.random.PRNGKey(0), tokens, tokens)["params"]
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed), sep="/")
    expected_by_name = {
        "token_embedder/embedding": ("vocab", "embed"),
        "decoder/logits_dense/kernel": ("embed", "vocab"),
        "encoder/relpos_bias/rel_embedding": ("heads", "relpos_buckets"),
        "encoder/encoder_norm/scale": ("embed",),
        "encoder/layers_0/attention/query/kernel": ("embed", "joined_kv"),
        "decoder/layers_1/encoder_decoder_attention/out/kernel": ("joined_kv", "embed"),
        "decoder/layers_0/mlp/wi_1/kernel": ("embed", "mlp"),
        "encoder/layers_1/mlp/wo/kernel": ("mlp", "embed"),
    }
    for path, axes in expected_by_name.items():
        assert tuple(specs[path]) == axes, path
    allowed = {"embed", "mlp", "heads", "joined_kv", "vocab", "relpos_buckets"}
    for path, spec in specs.items():
        assert spec and set(spec) <= allowed, (path, spec)


def test_bfloat16_activations_keep_float32_params():
    config = tiny_config()
    params = _init(config)
    enc, dec = random_batch(2, 2, 9, 6, 64)
    full = np.asarray(T5(config).apply({"params": params}, enc, dec))
    half = T5(tiny_config(dtype="bfloat16")).apply({"params": params}, enc, dec)
    assert half.dtype == jnp.float32  # logits are float32 for the loss
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert np.abs(np.asarray(half) - full).max() < 0.05 * np.abs(full).max()
    assert not np.array_equal(np.asarray(half), full)


def _loss_and_grads(config, params, enc, dec, dropout_seed=None):
    def loss(p):
        rngs = {} if dropout_seed is None else {"dropout": jax.random.PRNGKey(dropout_seed)}
        logits = T5(config).apply({"params": p}, enc, dec, enable_dropout=bool(rngs), rngs=rngs)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 3])

    return jax.value_and_grad(loss)(params)


def test_remat_gives_the_same_gradients():
    params = _init(tiny_config())
    enc, dec = random_batch(3, 2, 9, 6, 64)
    plain = _loss_and_grads(tiny_config(), params, enc, dec)
    remat = _loss_and_grads(tiny_config(remat=True), params, enc, dec)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_only_when_enabled():
    config = tiny_config(dropout_rate=0.3)
    params = _init(config)
    enc, dec = random_batch(4, 2, 9, 6, 64)
    model = T5(config)
    off = np.asarray(model.apply({"params": params}, enc, dec))
    np.testing.assert_array_equal(
        off, np.asarray(T5(tiny_config()).apply({"params": params}, enc, dec))
    )
    on = [_loss_and_grads(config, params, enc, dec, dropout_seed=s)[0] for s in (1, 1, 2)]
    assert on[0] == on[1] and on[0] != on[2]


def test_gradients_match_hf(tmp_path):
    """The hand-written projection backward (layers.project) against PyTorch autograd."""
    import torch

    from dsbs_jax import checkpoints

    hf = make_hf_t5(seed=7, num_decoder_layers=3, d_kv=6)
    config, params = save_and_load(hf, tmp_path)
    encoder, decoder = random_batch(8, 3, 12, 9, config.vocab_size, pad_from=(12, 7, 12))
    targets = np.roll(decoder, -1, axis=1)

    def loss(p):
        logits = T5(config).apply({"params": p}, encoder, decoder)
        return jnp.mean(
            jax.nn.logsumexp(logits, -1)
            - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        )

    ours = traverse_util.flatten_dict(jax.grad(loss)(params))
    logits = hf(
        input_ids=torch.tensor(encoder),
        attention_mask=torch.tensor(encoder > 0),
        decoder_input_ids=torch.tensor(decoder),
    ).logits
    torch.nn.functional.cross_entropy(
        logits.reshape(-1, config.vocab_size), torch.tensor(targets).reshape(-1)
    ).backward()
    theirs = {name: p.grad.numpy() for name, p in hf.named_parameters()}
    pairs = [
        (path, theirs[name].T if transpose else theirs[name])
        for path, name, transpose in checkpoints.hf_parameter_names(config)
    ]
    pairs.append((("decoder", "logits_dense", "kernel"), theirs["lm_head.weight"].T))
    assert len(pairs) == len(ours)
    for path, expected in pairs:
        np.testing.assert_allclose(
            ours[path],
            expected,
            rtol=1e-4,
            atol=1e-5 * np.abs(expected).max(),
            err_msg="/".join(path),
        )
