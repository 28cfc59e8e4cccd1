"""Checkpoint formats: HF, T5X (inline and TensorStore zarr) and Orbax, and their errors."""

import json
import re

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import serialization, traverse_util
from reference import assert_logits_close, hf_logits, make_hf_t5, random_batch, save_and_load
from t5x_layout import write_zarr_copy

from dsbs_jax import checkpoints
from dsbs_jax.models import T5
from dsbs_jax.programs.convert import main as convert_main

# The test's own T5X -> HF naming, written independently of dsbs_jax.checkpoints.
_T5X_TO_HF = [
    (r"token_embedder/embedding", "shared.weight"),
    (r"decoder/logits_dense/kernel", "lm_head.weight"),
    (
        r"(\w+)/relpos_bias/rel_embedding",
        r"\1.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (r"(\w+)/\w+_norm/scale", r"\1.final_layer_norm.weight"),
    (
        r"encoder/layers_(\d+)/pre_attention_layer_norm/scale",
        r"encoder.block.\1.layer.0.layer_norm.weight",
    ),
    (
        r"encoder/layers_(\d+)/pre_mlp_layer_norm/scale",
        r"encoder.block.\1.layer.1.layer_norm.weight",
    ),
    (
        r"encoder/layers_(\d+)/attention/(\w)\w*/kernel",
        r"encoder.block.\1.layer.0.SelfAttention.\2.weight",
    ),
    (
        r"encoder/layers_(\d+)/mlp/(\w+)/kernel",
        r"encoder.block.\1.layer.1.DenseReluDense.\2.weight",
    ),
    (
        r"decoder/layers_(\d+)/pre_self_attention_layer_norm/scale",
        r"decoder.block.\1.layer.0.layer_norm.weight",
    ),
    (
        r"decoder/layers_(\d+)/pre_cross_attention_layer_norm/scale",
        r"decoder.block.\1.layer.1.layer_norm.weight",
    ),
    (
        r"decoder/layers_(\d+)/pre_mlp_layer_norm/scale",
        r"decoder.block.\1.layer.2.layer_norm.weight",
    ),
    (
        r"decoder/layers_(\d+)/self_attention/(\w)\w*/kernel",
        r"decoder.block.\1.layer.0.SelfAttention.\2.weight",
    ),
    (
        r"decoder/layers_(\d+)/encoder_decoder_attention/(\w)\w*/kernel",
        r"decoder.block.\1.layer.1.EncDecAttention.\2.weight",
    ),
    (
        r"decoder/layers_(\d+)/mlp/(\w+)/kernel",
        r"decoder.block.\1.layer.2.DenseReluDense.\2.weight",
    ),
]


def t5x_to_hf_state_dict(params) -> dict[str, torch.Tensor]:
    state = {}
    for path, value in traverse_util.flatten_dict(params, sep="/").items():
        for pattern, template in _T5X_TO_HF:
            if re.fullmatch(pattern, path):
                name = re.sub(pattern, template, path)
                value = np.asarray(value, np.float32)
                state[name] = torch.tensor(
                    value if value.ndim == 1 or name == "shared.weight" else value.T
                )
                break
        else:
            raise AssertionError(f"no HF name for {path}")
    return state


@pytest.fixture(scope="module")
def fixture_checkpoint(shared_dir):
    return checkpoints.load(shared_dir / "fixtures/t5x/test_t5_tiny.checkpoint_0")


def test_t5x_fixture_loads_and_matches_hf(fixture_checkpoint):
    config, params = fixture_checkpoint
    assert (config.vocab_size, config.emb_dim, config.num_heads, config.head_dim) == (
        32128,
        8,
        4,
        3,
    )
    assert (config.mlp_dim, config.num_encoder_layers, config.num_decoder_layers) == (16, 2, 2)
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**checkpoints.hf_config_dict(config))
    ).eval()
    # transformers 5.x always ties lm_head to the embedding at construction: untie it.
    hf.lm_head.weight = torch.nn.Parameter(torch.empty(config.vocab_size, config.emb_dim))
    missing, unexpected = hf.load_state_dict(t5x_to_hf_state_dict(params), strict=False)
    assert not unexpected and set(missing) <= {
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
    }
    encoder, decoder = random_batch(0, 2, 12, 7, 32128, pad_from=(12, 6))
    ours = np.asarray(T5(config).apply({"params": params}, encoder, decoder))
    assert_logits_close(ours, hf_logits(hf, encoder, decoder))


def test_t5x_tensorstore_zarr_copy_loads_the_same(shared_dir, fixture_checkpoint, tmp_path):
    """The layout of the large public T5X checkpoints: arrays in per-parameter zarr dirs."""
    write_zarr_copy(shared_dir / "fixtures/t5x/test_t5_tiny.checkpoint_0", tmp_path)

    config, params = checkpoints.load(tmp_path)
    assert config == fixture_checkpoint[0]
    jax.tree.map(np.testing.assert_array_equal, params, fixture_checkpoint[1])


def test_save_hf_round_trips_through_transformers(fixture_checkpoint, tmp_path):
    config, params = fixture_checkpoint
    checkpoints.save_hf(tmp_path / "hf", config, params)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    encoder, decoder = random_batch(1, 2, 10, 6, 32128, pad_from=(4, 10))
    ours = np.asarray(T5(config).apply({"params": params}, encoder, decoder))
    assert_logits_close(ours, hf_logits(hf, encoder, decoder))
    again = checkpoints.load(tmp_path / "hf")
    assert again[0] == config
    jax.tree.map(np.testing.assert_array_equal, again[1], params)


def test_orbax_round_trip_and_latest_step(fixture_checkpoint, tmp_path):
    config, params = fixture_checkpoint
    doubled = jax.tree.map(lambda x: 2 * x, params)
    checkpoints.save_orbax(tmp_path / "run" / "100", config, params)
    checkpoints.save_orbax(tmp_path / "run" / "2000", config, doubled)
    step, step_params = checkpoints.load(tmp_path / "run" / "100")
    assert step == config
    jax.tree.map(np.testing.assert_array_equal, step_params, params)
    # A manager's directory: the newest step by number, not by name.
    jax.tree.map(np.testing.assert_array_equal, checkpoints.load(tmp_path / "run")[1], doubled)


@pytest.mark.parametrize("save", [checkpoints.save_hf, checkpoints.save_orbax])
def test_a_failed_save_keeps_the_previous_checkpoint(fixture_checkpoint, tmp_path, save):
    config, params = fixture_checkpoint
    save(tmp_path / "model", config, params)
    with pytest.raises(Exception):  # noqa: B017 (whatever the writer raises)
        save(tmp_path / "model", config, {**params, "broken": object()})
    kept = checkpoints.load(tmp_path / "model")
    jax.tree.map(np.testing.assert_array_equal, kept[1], params)
    # A successful save replaces it, and nothing is left beside it.
    doubled = jax.tree.map(lambda x: 2 * x, params)
    save(tmp_path / "model", config, doubled)
    jax.tree.map(np.testing.assert_array_equal, checkpoints.load(tmp_path / "model")[1], doubled)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_sharded_safetensors_and_torch_bin(tmp_path):
    hf = make_hf_t5(seed=1)
    config, params = save_and_load(hf, tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / checkpoints.HF_SAFETENSORS_INDEX).exists()
    _write_torch_bin(hf, tmp_path / "bin")
    for variant in ("sharded", "bin"):
        other_config, other = checkpoints.load(tmp_path / variant)
        assert other_config == config
        jax.tree.map(np.testing.assert_array_equal, other, params)


def test_bfloat16_safetensors(tmp_path):
    """Many fine-tuned T5s are stored in bfloat16, which numpy has no dtype for."""
    hf = make_hf_t5(seed=5).to(torch.bfloat16)
    config, params = save_and_load(hf, tmp_path)
    embedding = params["token_embedder"]["embedding"]
    assert embedding.dtype == np.float32
    np.testing.assert_array_equal(embedding, hf.shared.weight.detach().float().numpy())
    np.testing.assert_array_equal(
        params["decoder"]["logits_dense"]["kernel"], hf.lm_head.weight.detach().float().numpy().T
    )


def _write_torch_bin(hf, directory):
    """The legacy PyTorch layout (transformers 5 no longer writes it)."""
    directory.mkdir()
    hf.config.to_json_file(directory / "config.json")
    torch.save(hf.state_dict(), directory / checkpoints.HF_TORCH_BIN)


@pytest.mark.parametrize("scale", [True, False])
def test_tied_head_without_lm_head(tmp_path, scale):
    """transformers 5.x may omit lm_head.weight; the shared embedding serves, scaled or not."""
    hf = make_hf_t5(seed=2)
    hf.lm_head.weight = hf.shared.weight
    hf.config.scale_decoder_outputs = scale
    hf.save_pretrained(tmp_path)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(tmp_path / checkpoints.HF_SAFETENSORS)
    tensors.pop("lm_head.weight", None)
    save_file(tensors, tmp_path / checkpoints.HF_SAFETENSORS)
    config, params = checkpoints.load(tmp_path)
    encoder, decoder = random_batch(3, 2, 9, 5, config.vocab_size)
    ours = np.asarray(T5(config).apply({"params": params}, encoder, decoder))
    assert_logits_close(ours, hf_logits(hf, encoder, decoder))


def _error(path) -> str:
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_inputs_name_the_file_and_problem(tmp_path):
    hf = make_hf_t5(seed=4)
    hf.save_pretrained(tmp_path / "good")

    assert "no such file" in _error(tmp_path / "absent")

    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(
        (tmp_path / "good" / "config.json").read_text()
    )
    assert _error(tmp_path / "noweights").startswith(f"{tmp_path / 'noweights'}: no weights found")

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
    data = (tmp_path / "good" / checkpoints.HF_SAFETENSORS).read_bytes()
    (truncated / checkpoints.HF_SAFETENSORS).write_bytes(data[: len(data) // 2])
    message = _error(truncated)
    assert str(truncated / checkpoints.HF_SAFETENSORS) in message and "safetensors" in message

    wrong = tmp_path / "wrong_sizes"
    wrong.mkdir()
    hf_config = json.loads((tmp_path / "good" / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**hf_config, "d_ff": 40}))
    (wrong / checkpoints.HF_SAFETENSORS).write_bytes(data)
    message = _error(wrong)
    assert "wi_0" in message and "(16, 32)" in message and "(16, 40)" in message

    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "weights.npz").write_bytes(b"\0")
    assert "unknown checkpoint format" in _error(tmp_path / "unknown")
    (tmp_path / "notes.txt").write_text("hello")
    assert "unknown checkpoint format" in _error(tmp_path / "notes.txt")


def test_convert_cli(shared_dir, fixture_checkpoint, tmp_path, capsys):
    source = shared_dir / "fixtures/t5x/test_t5_tiny.checkpoint_0"
    assert convert_main([str(source), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert convert_main([str(tmp_path / "hf"), str(tmp_path / "orbax"), "--to", "orbax"]) == 0
    config, params = checkpoints.load(tmp_path / "orbax")
    assert config == fixture_checkpoint[0]
    jax.tree.map(np.testing.assert_array_equal, params, fixture_checkpoint[1])
    assert convert_main([str(tmp_path / "absent"), str(tmp_path / "x"), "--to", "hf"]) == 2
    assert "absent: no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_t5x_array_specs_cannot_point_outside_the_checkpoint(shared_dir, tmp_path):
    state = serialization.msgpack_restore(
        (shared_dir / "fixtures/t5x/test_t5_tiny.checkpoint_0").read_bytes()
    )
    escape = {"driver": "zarr", "kvstore": {"driver": "file", "path": "../../etc/secret"}}
    state["optimizer"]["target"]["token_embedder"]["embedding"] = escape
    (tmp_path / "checkpoint").write_bytes(serialization.msgpack_serialize(state))
    assert "must name a path inside the checkpoint" in _error(tmp_path)
