"""`generate` against HF transformers' `generate`, and its sampling and sharding contracts."""

import jax
import numpy as np
import pytest
import torch
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from reference import make_hf_t5, random_batch, save_and_load

from dsbs_jax.decoding import EOS_ID, generate

MAX_LENGTH = 14


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    # Unequal depths: HF's cached generate fails there, so the reference runs uncached.
    hf = make_hf_t5(seed=3, vocab_size=48, num_layers=2, num_decoder_layers=3)
    config, params = save_and_load(hf, tmp_path_factory.mktemp("hf"))
    encoder, _ = random_batch(5, 6, 20, 1, config.vocab_size, pad_from=(20, 12, 20, 3, 9, 20))
    return hf, config, params, encoder


def hf_generate(hf, encoder: np.ndarray, **options) -> np.ndarray:
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(encoder),
            attention_mask=torch.tensor(encoder > 0),
            do_sample=False,
            max_new_tokens=MAX_LENGTH,
            use_cache=False,
            **options,
        ).numpy()[:, 1:]  # drop the decoder start token
    return out


def until_eos(row: np.ndarray) -> list[int]:
    row = list(row)
    return row[: row.index(EOS_ID) + 1] if EOS_ID in row else row


def test_greedy_equals_hf(models):
    hf, config, params, encoder = models
    ours = np.asarray(generate(config, params, encoder, MAX_LENGTH))
    theirs = hf_generate(hf, encoder, num_beams=1)
    assert ours.shape == (len(encoder), MAX_LENGTH)
    assert [until_eos(r) for r in ours] == [until_eos(r) for r in theirs]
    assert any(EOS_ID in r for r in ours) and any(EOS_ID not in r for r in ours)


@pytest.mark.parametrize("length_penalty", [0.5, 1.0, 2.0])
def test_beam_search_equals_hf(models, length_penalty):
    hf, config, params, encoder = models
    ours = np.asarray(
        generate(
            config, params, encoder, MAX_LENGTH, "beam", num_beams=3, length_penalty=length_penalty
        )
    )
    theirs = hf_generate(hf, encoder, num_beams=3, length_penalty=length_penalty)
    assert [until_eos(r) for r in ours] == [until_eos(r) for r in theirs]


def test_output_is_zero_after_eos(models):
    _, config, params, encoder = models
    for method in ("greedy", "beam", "sample"):
        for row in np.asarray(generate(config, params, encoder, MAX_LENGTH, method)):
            if EOS_ID in row:
                assert not row[list(row).index(EOS_ID) + 1 :].any(), (method, row)


def test_sampling_options(models):
    _, config, params, encoder = models
    greedy = np.asarray(generate(config, params, encoder, MAX_LENGTH))

    def sample(seed, **options):
        rng = jax.random.PRNGKey(seed)
        return np.asarray(
            generate(config, params, encoder, MAX_LENGTH, "sample", rng=rng, **options)
        )

    np.testing.assert_array_equal(sample(0, top_k=1), greedy)
    np.testing.assert_array_equal(sample(0, top_p=1e-6), greedy)
    np.testing.assert_array_equal(sample(1, temperature=2.0), sample(1, temperature=2.0))
    assert not np.array_equal(sample(1, temperature=2.0), sample(2, temperature=2.0))
    # Hot sampling from the two most likely tokens departs from the greedy path.
    assert not np.array_equal(sample(3, temperature=5.0, top_k=2), greedy)


def test_bad_method_and_temperature(models):
    _, config, params, encoder = models
    with pytest.raises(ValueError, match="method 'nucleus'"):
        generate(config, params, encoder, 4, "nucleus")
    with pytest.raises(ValueError, match="temperature > 0"):
        generate(config, params, encoder, 4, "sample", temperature=0.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        generate(config, params, encoder, 4, "sample", top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be in"):
        generate(config, params, encoder, 4, "sample", top_k=config.vocab_size + 1)
    with pytest.raises(ValueError, match="num_beams"):
        generate(config, params, encoder, 4, "beam", num_beams=0)


def test_sharded_over_a_mesh_equals_one_device(models):
    _, config, params, encoder = models
    devices = np.array(jax.devices()[:2])
    assert len(devices) == 2, "conftest asks XLA for 4 host devices"
    mesh = Mesh(devices, ("data",))
    sharded_input = jax.device_put(encoder, NamedSharding(mesh, PartitionSpec("data")))
    replicated = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    for method in ("greedy", "beam"):
        ours = np.asarray(generate(config, replicated, sharded_input, MAX_LENGTH, method))
        np.testing.assert_array_equal(
            ours, np.asarray(generate(config, params, encoder, MAX_LENGTH, method))
        )
