"""Training checkpoints: an Orbax `CheckpointManager` over `MODEL_DIR/checkpoints`.

Each step directory holds the items `params` and `config` (so `checkpoints.load` and the
evaluation binaries read it like any checkpoint), `train_state` (optimiser state, step,
RNG, and a distilling run's hidden-state projections) and `data` (the position in the
training stream). Saves are asynchronous; the manager keeps the newest `keep` and the
`keep_best` best by a validation metric.
"""

import dataclasses

import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from dsbs_jax import partitioning
from dsbs_jax.checkpoints import ORBAX_CONFIG_ITEM, ORBAX_PARAMS_ITEM
from dsbs_jax.models import T5Config
from dsbs_jax.trainer import TrainState

TRAIN_STATE_ITEM, DATA_ITEM = "train_state", "data"


class TrainCheckpoints:
    """Save and restore `TrainState` plus the data position, by step."""

    def __init__(
        self, directory: epath.PathLike, keep: int = 3, keep_best: int = 1, best_metric: str = ""
    ):
        policies = [checkpoint_managers.LatestN(keep)]
        if best_metric and keep_best:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=True,
        )
        self.manager = ocp.CheckpointManager(epath.Path(directory), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        state: TrainState,
        config: T5Config,
        data_position: dict,
        metrics: dict | None = None,
    ) -> None:
        """Start an asynchronous save of `state` at its step (no-op if already saved)."""
        step = int(state.step)
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    ORBAX_PARAMS_ITEM: ocp.args.StandardSave(state.params),
                    ORBAX_CONFIG_ITEM: ocp.args.JsonSave(dataclasses.asdict(config)),
                    TRAIN_STATE_ITEM: ocp.args.StandardSave(_train_state(state)),
                    DATA_ITEM: ocp.args.JsonSave(data_position),
                }
            ),
            metrics=metrics,
        )

    def restore(
        self, step: int, abstract_state: TrainState, sharding: TrainState
    ) -> tuple[TrainState, dict]:
        """The state saved at `step`, placed by `sharding`, and its data position."""
        target = partitioning.abstract_arrays(abstract_state, sharding)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    ORBAX_PARAMS_ITEM: ocp.args.StandardRestore(target.params),
                    TRAIN_STATE_ITEM: ocp.args.StandardRestore(_train_state(target)),
                    DATA_ITEM: ocp.args.JsonRestore(),
                }
            ),
        )
        saved = restored[TRAIN_STATE_ITEM]
        state = TrainState(
            step=saved["step"],
            params=restored[ORBAX_PARAMS_ITEM],
            opt_state=saved["opt_state"],
            rng=saved["rng"],
            projections=saved.get("projections", {}),
        )
        return state, restored[DATA_ITEM]

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _train_state(state: TrainState) -> dict:
    """The `train_state` item: all but the parameters; the hidden-state projections only
    when the run has them, so other runs' checkpoints keep their layout."""
    item = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
    return item | ({"projections": state.projections} if state.projections else {})
