"""Read T5 checkpoints in the formats users have, and write them back for deployment.

`load(path)` detects and reads a Hugging Face T5 directory, a T5X legacy checkpoint (msgpack
with inline arrays or TensorStore zarr specs) or an Orbax checkpoint written by this
project, and returns `(T5Config, params)` with params in T5X's tree. `save_hf` writes a
directory that `transformers.T5ForConditionalGeneration.from_pretrained` loads.
"""

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import serialization, traverse_util

from dsbs_jax import files
from dsbs_jax.jsonl import json_type
from dsbs_jax.models import T5Config

Params = dict[str, Any]
ParamPath = tuple[str, ...]

HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_TORCH_BIN = "pytorch_model.bin"
T5X_CHECKPOINT = "checkpoint"
ORBAX_CONFIG_ITEM = "config"
ORBAX_PARAMS_ITEM = "params"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------
# Parameter layout
# ---------------------------------------------------------------------------------------------


def expected_shapes(config: T5Config) -> dict[ParamPath, tuple[int, ...]]:
    """The T5X parameter tree's paths and shapes for `config`, without allocating it."""
    e, m, j, v = config.emb_dim, config.mlp_dim, config.joined_kv_dim, config.vocab_size
    shapes = {
        ("token_embedder", "embedding"): (v, e),
        ("decoder", "logits_dense", "kernel"): (e, v),
    }
    for stack, layers, attentions in (
        ("encoder", config.num_encoder_layers, ("attention",)),
        ("decoder", config.num_decoder_layers, ("self_attention", "encoder_decoder_attention")),
    ):
        buckets = config.relative_attention_num_buckets
        shapes[(stack, "relpos_bias", "rel_embedding")] = (config.num_heads, buckets)
        shapes[(stack, f"{stack}_norm", "scale")] = (e,)
        for i in range(layers):
            layer = (stack, f"layers_{i}")
            for name, _ in _layer_norm_names(stack):
                shapes[(*layer, name, "scale")] = (e,)
            for attention in attentions:
                for proj in ("query", "key", "value"):
                    shapes[(*layer, attention, proj, "kernel")] = (e, j)
                shapes[(*layer, attention, "out", "kernel")] = (j, e)
            shapes[(*layer, "mlp", "wi_0", "kernel")] = (e, m)
            shapes[(*layer, "mlp", "wi_1", "kernel")] = (e, m)
            shapes[(*layer, "mlp", "wo", "kernel")] = (m, e)
    return shapes


def _layer_norm_names(stack: str) -> list[tuple[str, int]]:
    """Each T5X layer-norm name with the index of the HF sub-layer it precedes."""
    if stack == "encoder":
        return [("pre_attention_layer_norm", 0), ("pre_mlp_layer_norm", 1)]
    return [
        ("pre_self_attention_layer_norm", 0),
        ("pre_cross_attention_layer_norm", 1),
        ("pre_mlp_layer_norm", 2),
    ]


def check_params(config: T5Config, params: Params, source: str) -> Params:
    """Raise a `CheckpointError` naming the first missing, unexpected or misshapen parameter."""
    flat = traverse_util.flatten_dict(params)
    expected = expected_shapes(config)
    for path, shape in expected.items():
        if path not in flat:
            raise CheckpointError(f"{source}: parameter {'/'.join(path)} is missing")
        found = tuple(np.shape(flat[path]))
        if found != shape:
            raise CheckpointError(
                f"{source}: parameter {'/'.join(path)} has shape {found}, expected {shape} "
                "from the config"
            )
    extra = sorted("/".join(p) for p in flat.keys() - expected.keys())
    if extra:
        raise CheckpointError(f"{source}: unexpected parameters {', '.join(extra[:3])}")
    return params


# ---------------------------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------------------------


def hf_parameter_names(config: T5Config) -> Iterator[tuple[ParamPath, str, bool]]:
    """(T5X path, HF name, transpose?) for every parameter except the output head."""
    yield ("token_embedder", "embedding"), "shared.weight", False
    hf_proj = {"query": "q", "key": "k", "value": "v", "out": "o"}
    for stack, layers in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        yield (
            (stack, "relpos_bias", "rel_embedding"),
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            True,
        )
        yield (stack, f"{stack}_norm", "scale"), f"{stack}.final_layer_norm.weight", False
        attentions = (
            [("attention", "SelfAttention")]
            if stack == "encoder"
            else [
                ("self_attention", "SelfAttention"),
                ("encoder_decoder_attention", "EncDecAttention"),
            ]
        )
        for i in range(layers):
            ours, theirs = (stack, f"layers_{i}"), f"{stack}.block.{i}.layer"
            for name, sub in _layer_norm_names(stack):
                yield (*ours, name, "scale"), f"{theirs}.{sub}.layer_norm.weight", False
            for sub, (attention, hf_attention) in enumerate(attentions):
                for proj, hf in hf_proj.items():
                    yield (
                        (*ours, attention, proj, "kernel"),
                        f"{theirs}.{sub}.{hf_attention}.{hf}.weight",
                        True,
                    )
            mlp = f"{theirs}.{len(attentions)}.DenseReluDense"
            for proj in ("wi_0", "wi_1", "wo"):
                yield (*ours, "mlp", proj, "kernel"), f"{mlp}.{proj}.weight", True


def config_from_hf(hf: dict[str, Any], source: str) -> T5Config:
    if not isinstance(hf, dict):
        raise CheckpointError(f"{source}: holds {json_type(hf)} (expected a JSON object)")
    if hf.get("feed_forward_proj") not in ("gated-gelu", "gated-gelu_new"):
        raise CheckpointError(
            f"{source}: feed_forward_proj is {hf.get('feed_forward_proj')!r}; only T5.1.1 models "
            "(gated-gelu, e.g. t5-v1_1 and Flan-T5) are supported"
        )
    try:
        return T5Config(
            vocab_size=hf["vocab_size"],
            emb_dim=hf["d_model"],
            num_heads=hf["num_heads"],
            head_dim=hf["d_kv"],
            mlp_dim=hf["d_ff"],
            num_encoder_layers=hf["num_layers"],
            num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        )
    except KeyError as missing:
        raise CheckpointError(f"{source}: key {missing} is missing") from None


def _read_safetensors(file: epath.Path) -> dict[str, np.ndarray]:
    """Every tensor as float32, one at a time (bfloat16 files included, which numpy lacks)."""
    import safetensors.flax
    from safetensors import SafetensorError, safe_open

    try:
        if files.is_remote(file):  # safe_open maps local files only
            tensors = safetensors.flax.load(file.read_bytes())
            return {name: np.asarray(tensor, np.float32) for name, tensor in tensors.items()}
        with safe_open(str(file), framework="flax") as tensors:
            names = tensors.keys()
            return {name: np.asarray(tensors.get_tensor(name), np.float32) for name in names}
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from None


def _read_torch_bin(file: epath.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{file}: a PyTorch .bin checkpoint needs torch installed; convert it to safetensors"
        ) from None
    try:
        with file.open("rb") as stream:
            state = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise CheckpointError(f"{file}: not a readable PyTorch checkpoint ({error})") from None
    return {name: tensor.float().numpy() for name, tensor in state.items()}


def _read_hf_tensors(directory: epath.Path) -> dict[str, np.ndarray]:
    if (directory / HF_SAFETENSORS).exists():
        return _read_safetensors(directory / HF_SAFETENSORS)
    if (directory / HF_SAFETENSORS_INDEX).exists():
        index_file = directory / HF_SAFETENSORS_INDEX
        try:
            shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index_file}: expected JSON with a weight_map") from None
        tensors = {}
        for shard in shards:
            if not (directory / shard).exists():
                raise CheckpointError(f"{index_file}: shard {shard} is missing")
            tensors.update(_read_safetensors(directory / shard))
        return tensors
    if (directory / HF_TORCH_BIN).exists():
        return _read_torch_bin(directory / HF_TORCH_BIN)
    raise CheckpointError(
        f"{directory}: no weights found (expected {HF_SAFETENSORS}, {HF_SAFETENSORS_INDEX} "
        f"or {HF_TORCH_BIN})"
    )


def _hf_output_head(
    hf: dict[str, Any], tensors: dict[str, np.ndarray], config: T5Config
) -> np.ndarray:
    """The `logits_dense` kernel: the HF `lm_head`, or the tied embedding, scaled as HF does.

    transformers 5.x writes T5.1.1's untied head as `tie_word_embeddings: true` with
    `scale_decoder_outputs: false` and may leave `lm_head.weight` out when it is tied;
    4.x configs say `tie_word_embeddings` only, and a tied (default) model scales.
    """
    head = tensors.get("lm_head.weight", tensors["shared.weight"]).T
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    return head * (config.emb_dim**-0.5) if scale else head


def load_hf(directory: epath.Path) -> tuple[T5Config, Params]:
    config_file = directory / HF_CONFIG
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_file}: not valid JSON ({error})") from None
    config = config_from_hf(hf, str(config_file))
    tensors = _read_hf_tensors(directory)
    flat = {}
    for path, name, transpose in hf_parameter_names(config):
        if name not in tensors:
            raise CheckpointError(f"{directory}: tensor {name} is missing")
        array = np.asarray(tensors[name], np.float32)
        flat[path] = array.T if transpose else array
    flat[("decoder", "logits_dense", "kernel")] = np.asarray(
        _hf_output_head(hf, tensors, config), np.float32
    )
    return config, check_params(config, traverse_util.unflatten_dict(flat), str(directory))


def hf_config_dict(config: T5Config) -> dict[str, Any]:
    """The `config.json` of a Hugging Face T5.1.1 model with this architecture."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": config.dropout_rate,
        # T5.1.1: an untied, unscaled output head.
        "tie_word_embeddings": False,
        "scale_decoder_outputs": False,
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def save_hf(path: str | os.PathLike, config: T5Config, params: Params) -> None:
    """Write a Hugging Face T5 directory (config.json + model.safetensors), locally or on
    `gs://`, whole or not at all: a failure leaves any previous directory at `path` as it was."""
    check_params(config, params, "params")
    flat = traverse_util.flatten_dict(params)
    tensors = {}
    for param_path, name, transpose in hf_parameter_names(config):
        array = np.asarray(flat[param_path], np.float32)
        tensors[name] = np.ascontiguousarray(array.T if transpose else array)
    tensors["lm_head.weight"] = np.ascontiguousarray(
        np.asarray(flat[("decoder", "logits_dense", "kernel")], np.float32).T
    )
    with files.staged_directory(path) as staging:
        staging.mkdir()
        _write_safetensors(tensors, staging / HF_SAFETENSORS)
        (staging / HF_CONFIG).write_text(json.dumps(hf_config_dict(config), indent=2))


def _write_safetensors(tensors: dict[str, np.ndarray], file: epath.Path) -> None:
    """safetensors writes local files only: a remote one is written here, then copied."""
    from safetensors.numpy import save_file

    if not files.is_remote(file):
        save_file(tensors, str(file), metadata={"format": "pt"})
        return
    with tempfile.TemporaryDirectory() as local:
        save_file(tensors, os.path.join(local, file.name), metadata={"format": "pt"})
        epath.Path(local, file.name).copy(file)


# ---------------------------------------------------------------------------------------------
# T5X legacy checkpoints
# ---------------------------------------------------------------------------------------------


def _is_tensorstore_spec(node: Any) -> bool:
    return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _kvstore(directory: epath.Path, relative: str) -> dict[str, Any]:
    """A TensorStore kvstore for a parameter directory named relative to the checkpoint."""
    location = str(directory / relative)
    if location.startswith("gs://"):
        bucket, _, key = location[len("gs://") :].partition("/")
        return {"driver": "gcs", "bucket": bucket, "path": key}
    return {"driver": "file", "path": location}


def _read_tensorstore(spec: dict[str, Any], directory: epath.Path) -> np.ndarray:
    import tensorstore as ts

    spec = dict(spec)
    kvstore = spec["kvstore"]
    relative = kvstore.get("path", "") if isinstance(kvstore, dict) else ""
    # A checkpoint names its arrays relative to itself; never let it point elsewhere.
    if (
        not isinstance(kvstore, dict)
        or kvstore.get("driver", "file") != "file"
        or os.path.isabs(relative)
        or ".." in relative.split("/")
    ):
        raise CheckpointError(
            f"{directory}: array spec {kvstore} must name a path inside the checkpoint"
        )
    spec["kvstore"] = _kvstore(directory, relative)
    try:
        return np.asarray(ts.open(spec).result().read().result(), np.float32)
    except ValueError as error:
        raise CheckpointError(f"{directory}: cannot read array {kvstore} ({error})") from None


def _resolve_t5x_arrays(node: Any, directory: epath.Path) -> Any:
    if _is_tensorstore_spec(node):
        return _read_tensorstore(node, directory)
    if isinstance(node, dict):
        return {key: _resolve_t5x_arrays(value, directory) for key, value in node.items()}
    return np.asarray(node, np.float32)


def _config_from_params(flat: dict[ParamPath, np.ndarray]) -> T5Config:
    """Infer the architecture from a T5X parameter tree (T5X checkpoints hold no config)."""
    vocab, emb = flat[("token_embedder", "embedding")].shape
    heads, buckets = flat[("encoder", "relpos_bias", "rel_embedding")].shape
    joined = flat[("encoder", "layers_0", "attention", "query", "kernel")].shape[1]
    return T5Config(
        vocab_size=vocab,
        emb_dim=emb,
        num_heads=heads,
        head_dim=joined // heads,
        mlp_dim=flat[("encoder", "layers_0", "mlp", "wi_0", "kernel")].shape[1],
        num_encoder_layers=sum(
            1 for p in flat if p[0] == "encoder" and p[2:] == ("mlp", "wo", "kernel")
        ),
        num_decoder_layers=sum(
            1 for p in flat if p[0] == "decoder" and p[2:] == ("mlp", "wo", "kernel")
        ),
        relative_attention_num_buckets=buckets,
    )


def load_t5x(file: epath.Path) -> tuple[T5Config, Params]:
    """A T5X legacy checkpoint: the `checkpoint` msgpack file and its sibling array dirs."""
    try:
        state = serialization.msgpack_restore(file.read_bytes())
    except Exception as error:  # msgpack raises several types for a corrupt file
        raise CheckpointError(f"{file}: not a readable T5X msgpack checkpoint ({error})") from None
    try:
        target = state["optimizer"]["target"]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{file}: no optimizer/target parameter tree in the checkpoint"
        ) from None
    params = _resolve_t5x_arrays(target, file.parent)
    flat = traverse_util.flatten_dict(params)
    try:
        config = _config_from_params(flat)
    except KeyError as missing:
        raise CheckpointError(f"{file}: parameter {'/'.join(missing.args[0])} is missing") from None
    return config, check_params(config, params, str(file))


# ---------------------------------------------------------------------------------------------
# Orbax (this project's own checkpoints)
# ---------------------------------------------------------------------------------------------


def save_orbax(path: str | os.PathLike, config: T5Config, params: Params) -> None:
    """Write params and config as one Orbax checkpoint (items `params` and `config`), whole
    or not at all: a failure leaves any previous checkpoint at `path` as it was."""
    import orbax.checkpoint as ocp

    with (
        files.staged_directory(files.absolute(path)) as staging,
        ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer,
    ):
        checkpointer.save(
            staging,
            args=ocp.args.Composite(
                **{
                    ORBAX_PARAMS_ITEM: ocp.args.StandardSave(params),
                    ORBAX_CONFIG_ITEM: ocp.args.JsonSave(dataclasses.asdict(config)),
                }
            ),
        )


def _latest_orbax_step(directory: epath.Path) -> epath.Path:
    """A checkpoint manager's directory holds numbered step dirs: take the newest."""
    steps = [
        p for p in directory.iterdir() if p.name.isdigit() and (p / ORBAX_CONFIG_ITEM).exists()
    ]
    if not steps:
        raise CheckpointError(f"{directory}: no Orbax checkpoint steps found")
    return max(steps, key=lambda p: int(p.name))


def load_orbax(
    directory: epath.Path, target: Callable[[T5Config], Params] | None = None
) -> tuple[T5Config, Params]:
    """Read an Orbax checkpoint (the newest step of a manager's directory). `target(config)`
    may give the parameters' abstract arrays with shardings: then each host reads only its
    own shards (a model spread over several hosts needs this). Without it the parameters
    come whole to this host's first device, whatever mesh and hosts saved them."""
    import orbax.checkpoint as ocp

    if not (directory / ORBAX_CONFIG_ITEM).exists():
        directory = _latest_orbax_step(directory)
    location = epath.Path(files.absolute(directory))
    handler = ocp.CompositeCheckpointHandler(
        **{
            ORBAX_PARAMS_ITEM: ocp.StandardCheckpointHandler(),
            ORBAX_CONFIG_ITEM: ocp.JsonCheckpointHandler(),
        }
    )
    try:
        with ocp.Checkpointer(handler) as checkpointer:
            items = {ORBAX_CONFIG_ITEM: ocp.args.JsonRestore()}
            saved = checkpointer.restore(location, args=ocp.args.Composite(**items))
            config = T5Config(**saved[ORBAX_CONFIG_ITEM])
            if target:
                params_target = target(config)
            else:
                metadata = checkpointer.metadata(location).item_metadata
                on_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
                params_target = jax.tree.map(
                    lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=on_device),
                    metadata[ORBAX_PARAMS_ITEM],
                )
            items = {ORBAX_PARAMS_ITEM: ocp.args.StandardRestore(params_target)}
            restored = checkpointer.restore(location, args=ocp.args.Composite(**items))
    except (ValueError, FileNotFoundError, OSError, TypeError) as error:
        raise CheckpointError(f"{directory}: not a readable Orbax checkpoint ({error})") from None
    except KeyError as missing:  # a step without one of its items
        raise CheckpointError(
            f"{directory}: not a whole Orbax checkpoint (an item is missing: {missing.args[0]})"
        ) from None
    return config, check_params(config, restored[ORBAX_PARAMS_ITEM], str(directory))


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


def _looks_like_t5x_msgpack(file: epath.Path) -> bool:
    """T5X's msgpack state is a map whose first keys include `optimizer`."""
    with file.open("rb") as f:
        head = f.read(4096)
    return (
        bool(head) and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)) and b"optimizer" in head
    )


def detect_format(path: str | os.PathLike) -> str:
    """'hf', 't5x' or 'orbax', from the files at `path`."""
    path = epath.Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        if _looks_like_t5x_msgpack(path):
            return "t5x"
        raise CheckpointError(f"{path}: unknown checkpoint format (a file, but not a T5X msgpack)")
    if (path / HF_CONFIG).exists():
        return "hf"
    if (path / T5X_CHECKPOINT).is_file():
        return "t5x"
    if (path / ORBAX_CONFIG_ITEM).exists() or any(p.name.isdigit() for p in path.iterdir()):
        return "orbax"
    raise CheckpointError(
        f"{path}: unknown checkpoint format (expected {HF_CONFIG}, a T5X '{T5X_CHECKPOINT}' "
        "file, or an Orbax checkpoint written by dsbs-jax)"
    )


def load(path: str | os.PathLike) -> tuple[T5Config, Params]:
    """Read a T5.1.1 checkpoint from a Hugging Face dir, a T5X checkpoint or an Orbax dir."""
    fmt = detect_format(path)
    path = epath.Path(path)
    if fmt == "hf":
        return load_hf(path)
    if fmt == "t5x":
        return load_t5x(path if path.is_file() else path / T5X_CHECKPOINT)
    return load_orbax(path)
