"""A T5X checkpoint in the layout of the large public ones (arrays as TensorStore zarr
folders beside the `checkpoint` file), made from the inline fixture in ../shared."""

import pathlib

import numpy as np
import tensorstore as ts
from flax import serialization, traverse_util


def write_zarr_copy(fixture: pathlib.Path, directory: pathlib.Path) -> None:
    """`fixture`'s checkpoint with every parameter moved into a gzip zarr folder named as
    T5X names them (`target.encoder.layers_0...`), its spec left in the msgpack."""
    state = serialization.msgpack_restore(fixture.read_bytes())
    flat = traverse_util.flatten_dict(state["optimizer"]["target"])
    for path, array in flat.items():
        name = "target." + ".".join(path)
        spec = {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": name},
            "metadata": {
                "shape": list(array.shape),
                "chunks": list(array.shape),
                "dtype": "<f4",
                "compressor": {"id": "gzip", "level": 1},
            },
        }
        store = ts.open(
            {**spec, "kvstore": {"driver": "file", "path": str(directory / name)}}, create=True
        ).result()
        store.write(np.asarray(array, np.float32)).result()
        flat[path] = spec
    state["optimizer"]["target"] = traverse_util.unflatten_dict(flat)
    (directory / "checkpoint").write_bytes(serialization.msgpack_serialize(state))
