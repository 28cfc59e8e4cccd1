"""What a CQA validation pass of teacher-forced losses costs, padded versus packed.

Every `EVAL_PERIOD` steps `dsbs-train` computes each task's teacher-forced loss on the
validation split (`evaluation.Validation.task_losses`). Padded, every example costs the feature
lengths; packed (`Data.pack`, the default), its own tokens. This builds `dsbs_cqa` from
the release (`--manual_dir`) with a stand-in SentencePiece vocabulary (`data.py`'s: T5's is
not on this machine), takes the paper grid's CQA lengths from
`gin/runs/paper/dataset/cqa.gin`, and times both passes (label and rationale tasks, 975
examples) on a random T5.1.1 preset, after a pass that compiles. Both must give the same
losses; the line also gives the token positions each computes, and what padding to the
reference's lengths (inputs 1,024, targets 256) would compute, counted, not run.

    python bench/validation.py [--size small] [--batch 64] [--runs 1]
"""

import argparse
import pathlib
import tempfile
import time

import numpy as np
from common import SIZES, init_params, log
from data import register_cqa

import gin
from dsbs_jax import evaluation, gin_utils, optimizers, partitioning, run_tasks
from dsbs_jax.data import training_split
from dsbs_jax.inference import params_sharding
from dsbs_jax.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = {"inputs": 1024, "label": 256, "rationale": 256}


def grid_lengths() -> dict[str, int]:
    """CQA's lengths in the paper grid, as its dataset file sets them."""
    gin.clear_config()
    gin_utils.parse(["runs/paper/dataset/cqa.gin"])
    names = {"inputs": "INPUT_LENGTH", "label": "LABEL_LENGTH", "rationale": "RATIONALE_LENGTH"}
    lengths = {key: gin.query_parameter(f"%{macro}") for key, macro in names.items()}
    gin.clear_config()
    return lengths


def cqa_sides(
    manual_dir: pathlib.Path, directory: pathlib.Path
) -> tuple[dict[str, int], training_split.Tasks, dict[str, np.ndarray]]:
    """CQA's grid lengths, its dsbs tasks at them (registered over a stand-in vocabulary
    built in `directory`), and their training examples' token lengths (`check_lengths`')."""
    lengths = grid_lengths()
    register_cqa(manual_dir, directory)
    sides = run_tasks.task_lengths("dsbs", "dsbs_cqa_label_gt", "dsbs_cqa_rationale", lengths)
    return lengths, sides, training_split.check_lengths(sides, allow_truncation=False)


def positions(validation: evaluation.Validation) -> int:
    return sum(
        batch["encoder_input_tokens"].size + batch["decoder_target_tokens"].size
        for batches in validation.loss_batches.values()
        for batch in batches
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=64, help="Evaluation.batch_size")
    parser.add_argument("--runs", type=int, default=1, help="timed passes of each")
    parser.add_argument("--manual_dir", type=pathlib.Path, default=ROOT.parent / "shared/datasets")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        lengths, sides, scanned = cqa_sides(args.manual_dir, pathlib.Path(directory))
        config = SIZES[args.size]
        mesh = partitioning.make_mesh()
        weights = {"label": 0.5, "rationale": 0.5}
        trainer = Trainer(config, optimizers.adamw(1, 1e-4), mesh, weights)
        params = partitioning.place(init_params(config), params_sharding(config, mesh))
        shapes = {
            side: training_split.plan_packing({side: sides[side]}, scanned, args.batch, 1, 0)[side]
            for side in sides
        }
        passes = {
            "padded": evaluation.Validation(trainer, sides, args.batch, None),
            "packed": evaluation.Validation(trainer, sides, args.batch, None, shapes),
        }
        figures, results = {}, {}
        for name, validation in passes.items():
            log(f"{name}: compiling")
            results[name] = validation.task_losses(params)
            seconds = []
            for _ in range(args.runs):
                start = time.perf_counter()
                validation.task_losses(params)
                seconds.append(time.perf_counter() - start)
            figures[name] = (float(np.median(seconds)), positions(validation))
    for side in sides:
        key = f"loss/{side}"
        np.testing.assert_allclose(results["packed"][key], results["padded"][key], rtol=1e-4)
    examples = sum(  # the segments of the packed rows: one per example
        int(batch["encoder_segment_ids"].max(1).sum())
        for batch in passes["packed"].loss_batches["label"]
    )
    reference = examples * (2 * REFERENCE["inputs"] + REFERENCE["label"] + REFERENCE["rationale"])
    (padded_s, padded_p), (packed_s, packed_p) = figures["padded"], figures["packed"]
    print(
        f"validation losses cqa size={args.size} batch={args.batch} lengths={lengths} | "
        f"padded {padded_s:.2f} s ({padded_p} positions) | packed {packed_s:.2f} s "
        f"({packed_p} positions) | padded/packed time {padded_s / packed_s:.2f}x | "
        f"padded to the reference's lengths: {reference} positions (not run) | "
        f"losses agree: {results['packed']}"
    )


if __name__ == "__main__":
    main()
