"""The model presets in gin/models/, the core's promise to import without TensorFlow, and the
programs' former module names."""

import importlib
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


PROGRAMS = ("train", "eval", "infer", "annotate", "convert", "prepare", "report", "fit")


def test_the_programs_former_names_are_the_programs():
    """`from dsbs_jax import train` (users' gin files and scripts) is `dsbs_jax.programs.train`,
    and a gin file that imports it so binds the same `train()`."""
    for name in PROGRAMS:
        former = importlib.import_module(f"dsbs_jax.{name}")
        assert former is importlib.import_module(f"dsbs_jax.programs.{name}"), name
    gin.clear_config()
    gin.parse_config(
        "from __gin__ import dynamic_registration\n"
        "from dsbs_jax import train as old_name\n"
        "old_name.train.log_period = 7\n"
    )
    from dsbs_jax.programs import train

    assert gin.get_bindings(train.train)["log_period"] == 7
    gin.clear_config()
