"""The model presets in gin/models/, and the core's promise to import without TensorFlow."""

import subprocess
import sys

import numpy as np
import pytest

import gin
from dsbs_jax import checkpoints, gin_utils

# Published parameter counts of T5.1.1 (Flan-T5 has the same shapes).
PARAMETERS = {
    "small": 76_961_152,
    "base": 247_577_856,
    "large": 783_150_080,
    "xl": 2_849_757_184,
    "xxl": 11_135_332_352,
}


@pytest.mark.parametrize("family", ["t5_1_1", "flan_t5"])
@pytest.mark.parametrize("size", sorted(PARAMETERS))
def test_presets_have_the_published_sizes(family, size):
    gin.clear_config()
    gin_utils.parse([f"models/{family}_{size}.gin"])
    config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    shapes = checkpoints.expected_shapes(config).values()
    assert sum(int(np.prod(s)) for s in shapes) == PARAMETERS[size]
    gin.clear_config()


def test_core_imports_without_tensorflow():
    code = (
        "import sys; import dsbs_jax.models, dsbs_jax.decoding, dsbs_jax.checkpoints, "
        "dsbs_jax.convert; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
