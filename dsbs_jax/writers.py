"""Where a run's scalars go: TensorBoard event files under `{directory}/{kind}`, and, when
a project is named, a Weights & Biases run. Only the first host writes.

W&B is optional (`pip install 'dsbs-jax[wandb]'`) and takes its API key from the
environment only (`WANDB_API_KEY`, or `wandb login`); `WANDB_MODE=offline` logs without
one. A run's W&B id is kept in `MODEL_DIR/wandb_run_id`: a run resumed from its
checkpoints continues the same W&B run, and one started afresh (no checkpoint) starts a
new one, even in a MODEL_DIR used before.
"""

import os
import secrets
from collections.abc import Mapping
from typing import Any

import jax
import tensorflow as tf
from etils import epath

from dsbs_jax.files import write_atomically
from dsbs_jax.gin_utils import ConfigError
from gin import config_parser

RUN_ID_FILE = "wandb_run_id"


class TensorBoard:
    """Scalars as TensorBoard events, one writer per kind under `directory/kind`."""

    def __init__(self, directory: str):
        self.directory = directory
        self.writers = {}

    def write(self, kind: str, step: int, scalars: Mapping[str, float]) -> None:
        if kind not in self.writers:
            self.writers[kind] = tf.summary.create_file_writer(os.path.join(self.directory, kind))
        with self.writers[kind].as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
        self.writers[kind].flush()

    def close(self, failed: bool = False) -> None:
        del failed
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def read_scalars(directory: str, tag: str) -> dict[int, float]:
    """A TensorBoard tag's value per step (TF2 tensor summaries). Event files are read
    oldest first, so a step written again (after a restart) counts with its newest value."""
    paths = tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*"))
    values = {}
    for path in sorted(paths, key=lambda p: (tf.io.gfile.stat(p).mtime_nsec, p)):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def import_wandb():
    """The `wandb` module, or a `ConfigError` that says which extra installs it."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "train.wandb_project needs the wandb package: pip install 'dsbs-jax[wandb]'"
        ) from None
    return wandb


class Wandb:
    """A W&B run for a MODEL_DIR, named after it, its scalars logged as `{kind}/{name}`.

    `resume` (the run restarts from a checkpoint in `model_dir`) continues the W&B run whose
    id `model_dir` keeps; otherwise a new id is kept there. The run's files go under
    `model_dir/wandb` (under `$WANDB_DIR`, or `./wandb`, when `model_dir` is not local)."""

    def __init__(
        self,
        model_dir: str,
        project: str,
        entity: str | None = None,
        resume: bool = False,
        config: Mapping[str, Any] | None = None,
    ):
        wandb = import_wandb()
        local = "://" not in model_dir
        try:
            self.run = wandb.init(
                project=project,
                entity=entity,
                name=os.path.basename(model_dir.rstrip("/")),
                id=run_id(model_dir, resume),
                resume="allow",
                dir=os.path.abspath(model_dir) if local else None,
                config=dict(config or {}),
            )
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as error:
            raise ConfigError(
                f"W&B: {error} (the API key comes from the environment: WANDB_API_KEY or "
                "`wandb login`; WANDB_MODE=offline logs without one)"
            ) from None

    def write(self, kind: str, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log({f"{kind}/{name}": value for name, value in scalars.items()}, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def run_id(model_dir: str, resume: bool) -> str:
    """The W&B run id kept in `model_dir`: the kept one when resuming, else a new one."""
    path = epath.Path(model_dir) / RUN_ID_FILE
    if resume and path.exists():
        kept = path.read_text().strip()
        if kept:
            return kept
    new = secrets.token_hex(6)  # W&B ids must be unique in a project, even once deleted
    write_atomically(path, new + "\n")
    return new


class Summaries:
    """A run's scalars, written by the first host to TensorBoard under `directory/{kind}`
    and, with `wandb` (`Wandb`'s keyword arguments), to a W&B run too. As a context
    manager it closes both at the end, marking the W&B run failed on an exception."""

    def __init__(self, directory: str, wandb: Mapping[str, Any] | None = None):
        self.writers = []
        if jax.process_index() != 0:
            return
        self.writers.append(TensorBoard(directory))
        if wandb is not None:
            self.writers.append(Wandb(directory, **wandb))

    def write(self, kind: str, step: int, scalars: Mapping[str, float]) -> None:
        for writer in self.writers:
            writer.write(kind, step, scalars)

    def close(self, failed: bool = False) -> None:
        writers, self.writers = self.writers, []
        for writer in writers:
            writer.close(failed)

    def __enter__(self) -> "Summaries":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(failed=exc_type is not None)


# -------------------------------------------------------------------------------------------
# A gin config as W&B config
# -------------------------------------------------------------------------------------------


class _Macro(str):
    """`%NAME` in a gin config, resolved against the config's own macros."""


class _Delegate(config_parser.ParserDelegate):
    """Turns references into their text (`@optimizers.adamw()`) and keeps macros' names."""

    def configurable_reference(self, scoped_name: str, evaluate: bool) -> str:
        return f"@{scoped_name}" + ("()" if evaluate else "")

    def macro(self, macro_name: str) -> _Macro:
        return _Macro(macro_name)


def gin_bindings(config_text: str) -> dict[str, Any]:
    """The bindings of a gin config (`gin.operative_config_str()`) as nested dicts, which
    W&B shows as `settings.Data.batch_size`; macros are resolved, references are text.
    A config gin cannot parse back is kept whole, as `gin_config`."""
    try:
        statements = list(config_parser.ConfigParser(config_text, _Delegate()))
    except (SyntaxError, ValueError):
        return {"gin_config": config_text}
    bindings = [s for s in statements if isinstance(s, config_parser.BindingStatement)]
    macros = {s.selector: s.value for s in bindings if not s.arg_name and not s.scope}

    def plain(value: Any, seen: frozenset = frozenset()) -> Any:
        if isinstance(value, _Macro):
            if value in macros and value not in seen:
                return plain(macros[value], seen | {value})
            return f"%{value}"
        if isinstance(value, list | tuple):
            return [plain(v, seen) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v, seen) for k, v in value.items()}
        return value

    tree: dict[str, Any] = {}
    for statement in bindings:
        path = statement.selector.split(".") + [statement.arg_name] * bool(statement.arg_name)
        if statement.scope:
            path[0] = f"{statement.scope}/{path[0]}"
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # a macro and a module of one name: keep the first
                break
        else:
            node[path[-1]] = plain(statement.value)
    return tree
