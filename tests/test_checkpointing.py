"""Training checkpoints' retention: the newest `keep` steps, and the `keep_best` best by the
validation metric however old, on disk as well as in the manager's listing."""

import jax
import jax.numpy as jnp
import numpy as np

from dsbs_jax.checkpointing import TrainCheckpoints
from dsbs_jax.models import T5Config
from dsbs_jax.trainer import TrainState

CONFIG = T5Config(vocab_size=8, emb_dim=4, num_heads=1, head_dim=4, mlp_dim=8)
ACCURACY = {1: 50.0, 2: 90.0, 3: 60.0, 4: 40.0, 5: 30.0}  # step 2 is the best


def _state(step: int) -> TrainState:
    return TrainState(
        step=jnp.int32(step),
        params={"w": jnp.full((2,), float(step))},
        opt_state={"m": jnp.zeros((2,))},
        rng=jax.random.PRNGKey(step),
    )


def _save_all(directory, **retention) -> TrainCheckpoints:
    saved = TrainCheckpoints(directory, **retention)
    for step, accuracy in ACCURACY.items():
        saved.save(_state(step), CONFIG, {"step": step}, {"accuracy": accuracy})
        saved.wait()
    return saved


def _on_disk(directory) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_keep_best_keeps_the_best_step_beside_the_newest(tmp_path):
    saved = _save_all(tmp_path, keep=2, keep_best=1, best_metric="accuracy")
    assert sorted(saved.manager.all_steps()) == _on_disk(tmp_path) == [2, 4, 5]
    template = _state(0)
    restored, data = saved.restore(2, template, jax.tree.map(lambda x: x.sharding, template))
    np.testing.assert_array_equal(restored.params["w"], [2.0, 2.0])
    assert data == {"step": 2}


def test_without_a_best_metric_only_the_newest_are_kept(tmp_path):
    _save_all(tmp_path / "none", keep=2, keep_best=1, best_metric="")
    assert _on_disk(tmp_path / "none") == [4, 5]
    _save_all(tmp_path / "zero", keep=2, keep_best=0, best_metric="accuracy")
    assert _on_disk(tmp_path / "zero") == [4, 5]
    _save_all(tmp_path / "two", keep=1, keep_best=2, best_metric="accuracy")
    assert _on_disk(tmp_path / "two") == [2, 3, 5]
