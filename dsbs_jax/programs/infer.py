"""dsbs-infer: a trained student's labels and rationales for a JSONL file of raw inputs.

    dsbs-infer --checkpoint PATH --input FILE.jsonl --output_file OUT.jsonl
        [--output label|rationale|both] [--vocabulary SPM_MODEL]
        [--input_field input] [--id_field id] [--batch_size 32] [--max_input_length 512]
        [--long_inputs truncate|refuse] [--label_length 32] [--rationale_length 256]
        [--method greedy|beam] [--num_beams 4]
        [--model_parallelism 1] [--coordinator_address=HOST:PORT --num_processes=N
        --process_id=I]

Serving a student needs neither TensorFlow nor SeqIO, so this binary tokenises with
`dsbs_jax.tokenizer`, exactly as SeqIO does for T5 (the prefixed text's ids, cut to
leave room for EOS), and decodes through `inference.BatchDecoder` like every other binary.
Rows are appended and flushed batch by batch, so a reader sees results as they come, and
a run skips the ids already in its output: a killed run resumes where it stopped and ends
with the same file an uninterrupted run writes. What made the rows (checkpoint, with a
fingerprint of its content, vocabulary, fields, lengths, decoding) is recorded beside them in
`OUT.jsonl.settings.json`: a run with other settings refuses to add to them (exit 2, naming
the difference) rather than mix them, as it refuses rows whose id has another input now.
Bad input lines are named and skipped. Inputs longer than `--max_input_length` tokens (with
the prefix and EOS) are counted before any decoding: cut to fit with a warning, or with
`--long_inputs refuse` the run stops there (exit 2) naming them.
"""

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from typing import IO

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from dsbs_jax import (
    checkpoints,
    cli,
    console,
    files,
    inference,
    jsonl,
    partitioning,
    progress,
    results,
)
from dsbs_jax.prefixes import LABEL_PREFIX, RATIONALE_PREFIX
from dsbs_jax.tokenizer import Tokenizer, VocabularyError

PROG = "dsbs-infer"
DEFAULT_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
PREFIXES = {"label": LABEL_PREFIX, "rationale": RATIONALE_PREFIX}
FIELDS = {"label": ("label",), "rationale": ("rationale",), "both": ("label", "rationale")}
SETTINGS_SUFFIX = ".settings.json"  # beside the output file: what made its rows

Id = str | int


@dataclasses.dataclass(frozen=True)
class Example:
    """One input line: its id (given, or the line number) and its raw input text."""

    id: Id
    input: str


# ---------------------------------------------------------------------------------------------
# Input and output files
# ---------------------------------------------------------------------------------------------


def read_inputs(path: str, input_field: str, id_field: str) -> tuple[list[Example], list[str]]:
    """The examples of a JSONL file, and a `FILE:LINE: problem` for each line skipped.

    Blank lines are ignored; a line without the id field takes its line number as its id.
    """

    def example(record: dict, number: int) -> Example:
        text = jsonl.string_field(record, input_field)
        return Example(jsonl.record_id(record, id_field, number), text)

    try:
        return jsonl.read_examples(path, example, lambda e: e.id)
    except OSError as error:
        reason = error.strerror or error
        raise cli.UsageError(f"--input {path}: cannot read it ({reason})") from None


def made_by(args: argparse.Namespace) -> dict:
    """What an output file's rows depend on: rows made otherwise are not this run's."""

    names = ("output", "max_input_length", "label_length", "rationale_length", "method")
    return {
        "checkpoint": files.absolute(args.checkpoint),
        "checkpoint_content": files.fingerprint(args.checkpoint),
        "vocabulary": files.absolute(args.vocabulary),
        **{name: getattr(args, name) for name in names},
        "num_beams": args.num_beams if args.method == "beam" else None,
    }


def settings_file(output_file: str) -> epath.Path:
    return epath.Path(output_file + SETTINGS_SUFFIX)


def check_made_by(output_file: str, settings: dict, rows: int) -> None:
    """Refuse to add to rows that another run's settings made."""
    path = settings_file(output_file)
    remedy = "give another --output_file, or remove it (and its settings) to predict again"
    if not rows:
        return
    if not path.exists():
        raise cli.UsageError(f"{output_file} has {rows} rows but no {path.name}: {remedy}")
    differences = results.differences(json.loads(path.read_text()), settings)
    if differences:
        made = "; ".join(differences.values())
        raise cli.UsageError(f"{output_file} holds {rows} rows made otherwise ({made}): {remedy}")


def finished_inputs(path: str, settings: dict) -> dict[Id, str]:
    """The input of each id already in an output file made with `settings`; a partial last
    line (a killed write) is dropped first."""
    lines, partial = files.complete_lines(path)
    if partial:
        say(f"dropped the partial last line of {path} (a write that was cut off)")
    inputs = {}
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            inputs[row["id"]] = row["input"]
        except (ValueError, TypeError, KeyError):
            raise cli.UsageError(
                f"{path}:{number}: not a row dsbs-infer writes (expected a JSON object with "
                "an 'id' and an 'input'); give another --output_file or remove this one"
            ) from None
    check_made_by(path, settings, len(lines))
    return inputs


def check_inputs(examples: list[Example], done: dict[Id, str], output_file: str) -> None:
    """Refuse rows whose id has another input now: the input file changed under them."""
    changed = [e.id for e in examples if e.id in done and done[e.id] != e.input]
    if changed:
        named = ", ".join(map(repr, changed[:5])) + (", ..." if len(changed) > 5 else "")
        raise cli.UsageError(
            f"{output_file} holds rows for {len(changed)} ids whose input is another now "
            f"({named}): give another --output_file, or remove it to predict again"
        )


def pending_examples(examples: list[Example], output_file: str, settings: dict) -> list[Example]:
    """The examples without a row in the output file, as process 0 sees it; when process 0
    refuses the file, every process raises (none is left waiting for the others)."""
    done, refusal = {}, None
    if jax.process_index() == 0:
        try:
            done = finished_inputs(output_file, settings)
            check_inputs(examples, done, output_file)
        except cli.UsageError as error:
            refusal = error
    todo = np.array([example.id not in done for example in examples], np.int32)
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
        if refused and refusal is None:
            raise cli.UsageError(f"{output_file}: refused by process 0 (its message says why)")
        todo = np.asarray(multihost_utils.broadcast_one_to_all(todo))
    if refusal is not None:
        raise refusal
    return [example for example, keep in zip(examples, todo, strict=True) if keep]


@contextlib.contextmanager
def appender(path: str, settings: dict) -> Iterator[IO[bytes] | None]:
    """The output file opened for appending on process 0, its settings written beside it;
    `None` on the others."""
    if jax.process_index() != 0:
        yield None
        return
    output = epath.Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomically(settings_file(path), json.dumps(settings, indent=2) + "\n")
    with output.open("ab") as stream:
        yield stream


def say(message: str) -> None:
    """A note on stderr, from process 0 only."""
    if jax.process_index() == 0:
        cli.say(PROG, message)


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


def predict(
    batch: list[Example],
    tokenizer: Tokenizer,
    decoders: dict[str, inference.BatchDecoder],
    batch_size: int,
    max_input_length: int,
) -> list[dict]:
    """One output row per example; the batch is padded with empty rows to `batch_size`."""
    rows = [{"id": example.id, "input": example.input} for example in batch]
    for field, decoder in decoders.items():
        tokens = tokenizer.encode([PREFIXES[field] + e.input for e in batch], max_input_length)
        tokens = np.pad(tokens, ((0, batch_size - len(batch)), (0, 0)))
        for row, ids in zip(rows, decoder(tokens)[: len(batch)], strict=True):
            row[field] = tokenizer.decode(ids)
    return rows


def long_inputs(
    examples: list[Example], tokenizer: Tokenizer, fields: Sequence[str], max_input_length: int
) -> list[tuple[Id, int]]:
    """(id, tokens) of each example whose input, with a field's prefix and EOS, is longer
    than `max_input_length`: `Tokenizer.encode` would cut its end off."""
    lengths = [0] * len(examples)
    for field in fields:
        ids = tokenizer.ids([PREFIXES[field] + example.input for example in examples])
        lengths = [max(length, len(row) + 1) for length, row in zip(lengths, ids, strict=True)]
    return [(e.id, n) for e, n in zip(examples, lengths, strict=True) if n > max_input_length]


def check_lengths(examples: list[Example], tokenizer: Tokenizer, args: argparse.Namespace) -> None:
    """Warn about the inputs `--max_input_length` cuts, or refuse them (`--long_inputs`)."""
    long = long_inputs(examples, tokenizer, FIELDS[args.output], args.max_input_length)
    if not long:
        return
    named = ", ".join(f"{example_id!r} ({tokens} tokens)" for example_id, tokens in long[:5])
    named += ", ..." if len(long) > 5 else ""
    message = (
        f"{len(long)} of {len(examples)} inputs are longer than --max_input_length "
        f"{args.max_input_length} tokens with the prefix and EOS: {named}"
    )
    if args.long_inputs == "refuse":
        raise cli.UsageError(f"{message}; raise --max_input_length (nothing was decoded)")
    say(f"{message}; their ends are cut off (--long_inputs refuse stops instead)")


def make_decoders(
    args: argparse.Namespace, tokenizer: Tokenizer
) -> dict[str, inference.BatchDecoder]:
    """One decoder per output field, for the checkpoint placed on this run's mesh."""
    try:
        mesh = partitioning.make_mesh(args.model_parallelism)
    except ValueError as error:
        raise cli.UsageError(f"--model_parallelism: {error}") from None
    if args.batch_size % partitioning.batch_shards(mesh):
        raise cli.UsageError(
            f"--batch_size {args.batch_size} must be a multiple of the mesh's data axis "
            f"({partitioning.batch_shards(mesh)}: {jax.device_count()} devices / "
            f"--model_parallelism {args.model_parallelism})"
        )
    try:
        config, params = inference.load_params(args.checkpoint, mesh)
    except checkpoints.CheckpointError as error:
        raise cli.UsageError(f"--checkpoint {error}") from None
    try:
        tokenizer.check_fits(config.vocab_size, args.vocabulary)
    except VocabularyError as error:
        raise cli.UsageError(f"--vocabulary {error}") from None
    lengths = {"label": args.label_length, "rationale": args.rationale_length}
    options = {"num_beams": args.num_beams}
    return {
        field: inference.BatchDecoder(config, params, mesh, lengths[field], args.method, options)
        for field in FIELDS[args.output]
    }


def run(args: argparse.Namespace) -> int:
    """Predict every pending example; 1 if input lines were skipped, else 0."""
    files.check_folder(epath.Path(args.output_file).parent, "--output_file's folder")
    examples, problems = read_inputs(args.input, args.input_field, args.id_field)
    if problems and jax.process_index() == 0:
        print("\n".join(problems), file=sys.stderr, flush=True)
    settings = made_by(args)
    pending = pending_examples(examples, args.output_file, settings)
    if not pending:
        say(
            f"all {len(examples)} examples of {args.input} are in {args.output_file}: nothing to do"
        )
        return finish(problems, args.input)
    try:
        tokenizer = Tokenizer(args.vocabulary)
    except VocabularyError as error:
        raise cli.UsageError(f"--vocabulary {error}") from None
    check_lengths(pending, tokenizer, args)
    decoders = make_decoders(args, tokenizer)
    done = len(examples) - len(pending)
    counter = progress.Counter(len(examples), initial=done)
    with appender(args.output_file, settings) as stream:
        for start in range(0, len(pending), args.batch_size):
            batch = pending[start : start + args.batch_size]
            rows = predict(batch, tokenizer, decoders, args.batch_size, args.max_input_length)
            done += len(batch)
            if stream is not None:
                jsonl.append_rows(stream, rows)
                counter.update(done, skipped_lines=len(problems))
    if jax.process_index() == 0:
        counter.update(done, force=True, skipped_lines=len(problems))
    say(f"wrote {len(pending)} predictions to {args.output_file} ({done} in all)")
    return finish(problems, args.input)


def finish(problems: list[str], input_path: str) -> int:
    """The exit code: 1 when input lines were skipped."""
    if problems:
        say(f"skipped {len(problems)} bad lines of {input_path} (named above)")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="Orbax, Hugging Face or T5X")
    parser.add_argument("--input", required=True, help="JSONL, one object per line")
    parser.add_argument("--output_file", required=True, help="JSONL predictions (resumable)")
    parser.add_argument("--output", choices=tuple(FIELDS), default="label")
    parser.add_argument("--vocabulary", default=DEFAULT_VOCABULARY, help="SentencePiece model")
    parser.add_argument("--input_field", default="input")
    parser.add_argument("--id_field", default="id", help="absent: the line number is the id")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_input_length", type=int, default=512)
    parser.add_argument(
        "--long_inputs",
        choices=("truncate", "refuse"),
        default="truncate",
        help="inputs over --max_input_length: cut their ends (with a warning) or stop first",
    )
    parser.add_argument("--label_length", type=int, default=32)
    parser.add_argument("--rationale_length", type=int, default=256)
    parser.add_argument("--method", choices=("greedy", "beam"), default="greedy")
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--model_parallelism", type=int, default=1)
    partitioning.add_distributed_flags(parser)
    console.setup(parser, argv)
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_input_length", "label_length", "rationale_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_flags(sys.argv[1:] if argv is None else argv)
    partitioning.initialize_distributed(
        args.coordinator_address, args.num_processes, args.process_id
    )
    return cli.exit_status(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
