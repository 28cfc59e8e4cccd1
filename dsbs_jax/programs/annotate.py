"""dsbs-annotate: a teacher LLM's chain-of-thought rationales for a dataset, by few-shot prompts.

    dsbs-annotate --input tfds:NAME|jsonl:PATH [--data_dir DIR] --split train|validation|test
        --prompt NAME|PATH|auto --backend openai|seq2seq --output_dir DIR
        [--name TASK] [--exemplars_from INPUT] [--exemplars 8] [--candidates 4]
        [--auto_samples 3]
        [--base_url URL --model NAME] [--endpoint completions|chat] [--api_key_env VAR]
        [--logprobs K] [--min_confidence LOGP]
        [--concurrency 8] [--requests_per_minute N] [--max_retries 6] [--timeout 60]
        [--backoff_base 1]
        [--checkpoint PATH --vocabulary SPM] [--batch_size 8] [--max_input_length 1024]
        [--samples 1] [--keep vote|gold|all] [--temperature 0] [--max_tokens 256]
        [--stop TEXT ...] [--seed N] [--limit N]
        [--dataset NAME | --input_field input --label_field FIELD --id_field id]
    dsbs-annotate --save_topk K --tasks TASK[,TASK...] --backend seq2seq --checkpoint PATH
        --split SPLIT --output_dir DIR  (the offline teacher's top-k: `annotate_topk`)

Rows go to `OUTPUT_DIR/annotations_{split}.jsonl` as their answers arrive, and a re-run
asks only for the examples without one (`teacher.annotating`: the resumable file, and the
vote of `--samples K` outputs that `--keep vote|gold|all` reads).

`--prompt auto` builds the few-shot prompt from the task's training rows with no exemplar
written by a person (`teacher.auto_prompt`), once per output dir: `auto_prompt.json` there
is reused by later runs with the same settings, so their rows keep one fingerprint.
`--logprobs K` stores each output's token log-probabilities and confidences
(`teacher.confidence`); `--min_confidence` keeps only the outputs sure enough.

With JSONL input and `--dataset NAME`, a finished run also writes the paper's release
layout under OUTPUT_DIR (`NAME/NAME_{split}.json` with the input rows and
`NAME/llm/{split}_CoT_0.json` with the first kept output of each, "" for none), so
`dsbs-prepare --dataset NAME --manual_dir OUTPUT_DIR` builds it as it builds the paper's
data. TFDS input gives annotations and the manifest only: a built dataset keeps the model
input, not the release rows (CQA's choices, NLI's premise and hypothesis) a builder reads.
`OUTPUT_DIR/manifest_{split}.json` records the teacher, prompt hash, settings, counts, parse
failures, the teacher's accuracy against gold and the client's request counters.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Sequence

from dsbs_jax import cli, console, files, jsonl
from dsbs_jax.data import datasets, release
from dsbs_jax.data.annotations import annotations_file, manifest_file
from dsbs_jax.data.datasets import NAME
from dsbs_jax.teacher import annotating, auto_prompt, confidence, prompts
from dsbs_jax.teacher.annotating import KEEP, Example
from dsbs_jax.teacher.backends import Teacher, TeacherError
from dsbs_jax.teacher.openai import ENDPOINTS, OpenAITeacher
from dsbs_jax.teacher.voting import label_matcher

PROG = "dsbs-annotate"
AUTO = "auto"  # --prompt auto: exemplars from the task's own rows
AUTO_PROMPT_FILE = "auto_prompt.json"
SETTINGS = (
    "input",
    "split",
    "dataset",
    "backend",
    "base_url",
    "api_key_env",
    "samples",
    "keep",
    "concurrency",
    "requests_per_minute",
    "max_retries",
    "timeout",
    "batch_size",
    "max_input_length",
    "limit",
)


def say(message: str) -> None:
    cli.say(PROG, message)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_tfds(name: str, split: str, data_dir: str | None) -> list[Example]:
    """A built TFDS split with features `id`, `input` and (optionally) `label`, in order."""
    tfds = console.quiet_import("tensorflow_datasets")  # and TensorFlow: only for this input
    console.quiet_import("dsbs_jax.data.builders")  # registers the dsbs_* builders

    try:
        dataset = tfds.load(
            name, split=split, data_dir=data_dir, shuffle_files=False, download=False
        )
    except (tfds.core.registered.DatasetNotFoundError, AssertionError, ValueError) as error:
        first_line = str(error).strip().split("\n")[0]
        raise cli.UsageError(f"--input tfds:{name} --split {split}: {first_line}") from None
    return [
        Example(
            id=_text(row["id"]),
            input=_text(row["input"]),
            gold=_text(row["label"]) if "label" in row else None,
        )
        for row in tfds.as_numpy(dataset)
    ]


@dataclasses.dataclass(frozen=True)
class JsonlFields:
    """How a JSONL row becomes an example: by a dataset's declaration, or by field names."""

    spec: datasets.Dataset | None
    input_field: str = "input"
    label_field: str | None = None
    id_field: str | None = "id"


def _model_input_and_gold(record: dict, fields: JsonlFields) -> tuple[str, str | None]:
    if fields.spec is None:
        gold_field = fields.label_field
        gold = jsonl.string_field(record, gold_field) if gold_field in record else None
        return jsonl.string_field(record, fields.input_field), gold
    if absent := [field for field in fields.spec.fields if field not in record]:
        raise ValueError(f"no field {absent[0]!r} (expected {', '.join(fields.spec.fields)})")
    try:
        model_input, gold = fields.spec.build_input(record), fields.spec.build_label(record)
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a {fields.spec.name} row ({error!r})") from None
    if not (isinstance(model_input, str) and isinstance(gold, str)):
        raise ValueError(f"not a {fields.spec.name} row (its input and label must be text)")
    return model_input, gold


def read_jsonl(path: str, fields: JsonlFields) -> tuple[list[Example], list[str]]:
    """The examples of a JSONL file, and a `FILE:LINE: problem` for each line skipped.

    Blank lines are ignored; without an id field, a row's line number is its id.
    """

    def example(record: dict, number: int) -> Example:
        model_input, gold = _model_input_and_gold(record, fields)
        return Example(jsonl.record_id(record, fields.id_field, number), model_input, gold, record)

    try:
        return jsonl.read_examples(path, example, lambda e: e.id)
    except OSError as error:
        raise cli.UsageError(f"--input jsonl:{path}: cannot read it ({error.strerror})") from None


def read_examples(
    args: argparse.Namespace,
    spec: datasets.Dataset | None,
    source: str,
    split: str,
    flag: str = "--input",
) -> tuple[list[Example], list[str]]:
    """The examples of `source` (what `flag` gave: --input or --exemplars_from), and the
    lines skipped."""
    scheme, _, location = source.partition(":")
    if scheme == "tfds" and location:
        if spec:
            raise cli.UsageError("--dataset is for jsonl input (a TFDS dataset names its own rows)")
        return read_tfds(location, split, args.data_dir), []
    if scheme == "jsonl" and location:
        id_field = (spec.id_field if spec else args.id_field) or None
        fields = JsonlFields(spec, args.input_field, args.label_field, id_field)
        return read_jsonl(location, fields)
    raise cli.UsageError(f"{flag} {source}: expected tfds:NAME or jsonl:PATH")


def dataset_spec(name: str, split: str) -> datasets.Dataset:
    """The declared dataset `--dataset`; its release must have a file for `split`."""
    try:
        spec = datasets.get(name)
    except ValueError as error:
        raise cli.UsageError(f"--dataset: {error}") from None
    if split == "validation" and not spec.has_validation:
        raise cli.UsageError(
            f"--dataset {name} has no validation file (its builder holds validation out of "
            "train): annotate the release's train rows with --split train"
        )
    return spec


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def make_teacher(args: argparse.Namespace, prompt: prompts.Prompt) -> Teacher:
    """The backend the flags ask for (the seq2seq one imports JAX, so only when asked)."""
    if args.backend == "openai":
        if not (args.base_url and args.model):
            raise cli.UsageError("--backend openai needs --base_url and --model")
        return OpenAITeacher(
            args.base_url,
            args.model,
            prompt,
            endpoint=args.endpoint,
            api_key_env=args.api_key_env,
            concurrency=args.concurrency,
            requests_per_minute=args.requests_per_minute,
            max_retries=args.max_retries,
            timeout=args.timeout,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            stop=args.stop,
            seed=args.seed,
            backoff_base=args.backoff_base,
            logprobs=args.logprobs,
        )
    if not (args.checkpoint and args.vocabulary):
        raise cli.UsageError("--backend seq2seq needs --checkpoint and --vocabulary")
    from dsbs_jax.checkpoints import CheckpointError
    from dsbs_jax.teacher.seq2seq import Seq2SeqTeacher

    try:
        return Seq2SeqTeacher(
            args.checkpoint,
            args.vocabulary,
            prompt,
            max_input_length=args.max_input_length,
            max_length=args.max_tokens,
            batch_size=args.batch_size,
            temperature=args.temperature,
            model_parallelism=args.model_parallelism,
            seed=args.seed or 0,
        )
    except (ValueError, CheckpointError) as error:
        raise cli.UsageError(f"--backend seq2seq: {error}") from None


def load_prompt(args: argparse.Namespace) -> prompts.Prompt:
    try:
        prompt = prompts.load_prompt(args.prompt)
    except prompts.PromptError as error:
        raise cli.UsageError(f"--prompt: {error}") from None
    if args.dataset and prompt.dataset != args.dataset:
        raise cli.UsageError(
            f"--prompt {args.prompt} writes {prompt.dataset!r} answers but --dataset is "
            f"{args.dataset!r}: the builder would parse them by another rule"
        )
    return prompt


def task_name(args: argparse.Namespace) -> str:
    """The task an automatic prompt is for (its answer format): `--name`, `--dataset`, the
    TFDS dataset without `dsbs_`, or the folder of the JSONL file (`MANUAL_DIR/NAME/`)."""
    scheme, _, location = args.input.partition(":")
    if args.name or args.dataset:
        return args.name or args.dataset
    if scheme == "tfds":
        return location.split(":")[0].removeprefix("dsbs_")
    folder = pathlib.Path(location).parent.name
    if not NAME.fullmatch(folder):
        raise cli.UsageError(f"--prompt {AUTO}: name the task with --name (its answer format)")
    return folder


def prompt_and_teacher(
    args: argparse.Namespace, spec: datasets.Dataset | None
) -> tuple[prompts.Prompt, Teacher]:
    """The prompt `--prompt` names, or the automatic one, and the teacher that asks with it."""
    if args.prompt != AUTO:
        prompt = load_prompt(args)
        return prompt, make_teacher(args, prompt)
    try:
        base = auto_prompt.skeleton(task_name(args))
    except prompts.PromptError as error:
        raise cli.UsageError(f"--prompt {AUTO}: {error}") from None
    teacher = make_teacher(args, auto_prompt.zero_shot(base))
    teacher.prompt = automatic_prompt(args, spec, base, teacher)
    return teacher.prompt, teacher


def automatic_prompt(
    args: argparse.Namespace,
    spec: datasets.Dataset | None,
    base: prompts.Prompt,
    teacher: Teacher,
) -> prompts.Prompt:
    """`--prompt auto`: exemplars from the training rows (`auto_prompt`), built once into
    OUTPUT_DIR and reused by every later run with the same settings, so that its answers keep
    their fingerprint (another prompt would re-ask the teacher for every example)."""
    source = args.exemplars_from or args.input
    if args.exemplars_from is None and args.input.startswith("jsonl:") and args.split != "train":
        raise cli.UsageError(
            f"--prompt {AUTO} takes its exemplars from training rows: with --split "
            f"{args.split}, name them with --exemplars_from jsonl:PATH"
        )
    pool, _ = read_examples(args, spec, source, "train", "--exemplars_from")
    search = auto_prompt.Search(args.exemplars, args.candidates, args.auto_samples, args.seed or 0)
    settings = {
        "dataset": base.dataset,
        "exemplars_from": source,
        "rows": len(pool),
        "search": dataclasses.asdict(search),
        "teacher": teacher.description,
    }
    path = args.output_dir / AUTO_PROMPT_FILE
    if path.exists():
        return reused_prompt(path, settings)
    say(f"building a prompt from {len(pool)} rows of {source} (--prompt {AUTO})")
    rows = [auto_prompt.Row(example.input, example.gold) for example in pool]
    try:
        prompt, report = auto_prompt.build(base, rows, teacher.generate, search)
    except auto_prompt.AutoPromptError as error:
        raise cli.UsageError(f"--prompt {AUTO}: {error}") from None
    record = {**prompt.to_json(), "provenance": {"settings": settings, "report": report}}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    files.write_atomically(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    empty = sum(not cluster["exemplar"] for cluster in report["clusters"])
    say(
        f"wrote a prompt of {report['exemplars']} exemplars to {path} after "
        f"{report['requests']} requests"
        + (f" ({empty} clusters gave no right answer in --candidates tries)" if empty else "")
    )
    return prompt


def reused_prompt(path: pathlib.Path, settings: dict) -> prompts.Prompt:
    """The automatic prompt an earlier run built, if it was built with `settings`."""
    try:
        prompt = prompts.load_prompt(str(path))
        built = json.loads(path.read_text())["provenance"]["settings"]
    except (prompts.PromptError, KeyError, TypeError) as error:
        raise cli.UsageError(f"{path}: not an automatic prompt ({error}): remove it") from None
    if built != settings:
        key = next(k for k in settings if built.get(k) != settings[k])
        raise cli.UsageError(
            f"{path} was built with {key} {built.get(key)!r}, this run's is {settings[key]!r}: "
            f"rerun with the same settings, use it as it is with --prompt {path}, or remove it "
            "to build another"
        )
    say(f"reusing the prompt built earlier in {path}")
    return prompt


def manifest(
    args: argparse.Namespace,
    teacher: Teacher,
    prompt: prompts.Prompt,
    key: str,
    annotated: list[dict],
    input_counts: dict[str, int],
) -> dict:
    """What the run was and what it gave; the counts cover this fingerprint's rows."""
    stats = getattr(teacher, "stats", None)
    return {
        "teacher": teacher.description,
        "prompt": {"name": prompt.name, "dataset": prompt.dataset, "sha256": prompt.sha256},
        "fingerprint": key,
        "settings": {name: getattr(args, name) for name in SETTINGS},
        "counts": {**input_counts, **annotating.counts(annotated)},
        "teacher_accuracy": annotating.teacher_accuracy(annotated, label_matcher(prompt.dataset)),
        "client": stats() if stats else None,
        **(logprob_report(args, teacher, prompt, annotated) if args.logprobs is not None else {}),
    }


def logprob_report(
    args: argparse.Namespace, teacher: Teacher, prompt: prompts.Prompt, annotated: list[dict]
) -> dict:
    """How many outputs came with log-probabilities, and how their confidence relates to
    being right against gold (also plotted beside the manifest); says what was missing."""
    given = [tokens for row in annotated for tokens in row.get("logprobs") or [None]]
    without = sum(tokens is None for tokens in given)
    refused = getattr(teacher, "logprobs_refused", "")
    if without:
        say(
            f"{without} of {len(given)} outputs came without logprobs"
            + (
                f" (the server rejects them: {refused})"
                if refused
                else " (the server ignores them)"
            )
            + ": their text is kept"
            + (
                ", and --min_confidence keeps none of them"
                if args.min_confidence is not None
                else ""
            )
        )
    report = confidence.calibration(annotated, prompt.dataset)
    if report is not None:
        path = args.output_dir / f"confidence_{args.split}.png"
        confidence.plot(report, f"{prompt.name}, {args.split}", path)
    return {
        "logprobs": {
            "asked": args.logprobs,
            "outputs": len(given),
            "without": without,
            "refused": refused,
        },
        "confidence": report,
    }


def run(args: argparse.Namespace) -> int:
    """Annotate every pending example; 1 if some are left or input lines were skipped."""
    start = time.monotonic()
    files.check_folder(args.output_dir, "--output_dir")
    spec = dataset_spec(args.dataset, args.split) if args.dataset else None
    examples, problems = read_examples(args, spec, args.input, args.split)
    examples = examples[: args.limit]
    if problems:
        print("\n".join(problems), file=sys.stderr, flush=True)
    try:
        prompt, teacher = prompt_and_teacher(args, spec)
    except TeacherError as error:
        say(f"stopped: {error}")
        return 2
    key = annotating.fingerprint(teacher.description, prompt.sha256, args.samples)
    vote = annotating.Vote(prompt.dataset, args.keep, args.min_confidence)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / annotations_file(args.split)
    saved = annotating.saved_rows(path)
    rows = annotating.rows_for(saved, key, examples)
    other = sum(row["fingerprint"] != key for row, _ in saved)
    if other:
        say(f"{other} rows of {path.name} have another fingerprint: kept, but not counted")
    say(f"fingerprint {key}: {len(rows)} of {len(examples)} examples already annotated")
    try:
        failures = annotating.annotate_pending(
            path, teacher, key, examples, rows, vote, args.samples, args.logprobs is not None
        )
    except TeacherError as error:
        say(f"stopped: {error}")
        return 2
    by_id = {example.id: example for example in examples}
    rows = {  # as --keep says now: it decides nothing the teacher was asked
        row_id: vote.row(by_id[row_id], row["outputs"], key, annotating.saved_tokens(row))
        for row_id, row in rows.items()
    }
    annotating.rewrite(path, examples, rows, saved, key)
    annotated = [rows[example.id] for example in examples if example.id in rows]
    left = len(examples) - len(annotated)
    input_counts = {
        "examples": len(examples),
        "unannotated": left,
        "skipped_lines": len(problems),
        "other_fingerprint_rows": other,
        "failed_requests": failures,
    }
    record = manifest(args, teacher, prompt, key, annotated, input_counts)
    record["elapsed_seconds"] = round(time.monotonic() - start, 3)
    manifest_path = args.output_dir / manifest_file(args.split)
    files.write_atomically(manifest_path, json.dumps(record, indent=2) + "\n")
    if left:
        say(f"{left} of {len(examples)} examples not annotated (requests failed): run again")
    elif spec:
        folder = annotating.write_release(args.output_dir, spec, args.split, examples, rows)
        say(f"wrote the release layout of {len(examples)} examples to {folder}")
    if problems:
        say(f"skipped {len(problems)} bad lines of {args.input} (named above)")
    return 1 if left or problems else 0


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--input", help="tfds:NAME or jsonl:PATH")
    parser.add_argument("--data_dir", help="TFDS data dir (tfds input)")
    parser.add_argument("--split", required=True, choices=release.SPLITS)
    parser.add_argument("--prompt", help=f"packaged prompt name, JSON file, or {AUTO}")
    parser.add_argument("--backend", choices=("openai", "seq2seq"), default="openai")
    parser.add_argument("--output_dir", required=True, type=cli.local_path)
    auto = parser.add_argument_group(f"--prompt {AUTO}: exemplars from training rows")
    auto.add_argument("--name", help="the task (its answer format); default: from the input")
    auto.add_argument("--exemplars_from", help="tfds:NAME or jsonl:PATH (default: the input)")
    auto.add_argument("--exemplars", type=int, default=8, help="clusters: one exemplar each")
    auto.add_argument("--candidates", type=int, default=4, help="questions tried per cluster")
    auto.add_argument(
        "--auto_samples", type=int, default=3, help="zero-shot answers voting, without gold"
    )
    jsonl = parser.add_argument_group("JSONL input")
    jsonl.add_argument("--dataset", help="release dataset whose rows the file holds")
    jsonl.add_argument("--input_field", default="input", help="without --dataset")
    jsonl.add_argument("--label_field", help="gold label, without --dataset (optional)")
    jsonl.add_argument("--id_field", default="id", help="absent: the line number is the id")
    server = parser.add_argument_group("openai backend")
    server.add_argument("--base_url", help="e.g. http://127.0.0.1:8000/v1")
    server.add_argument("--model")
    server.add_argument("--endpoint", choices=tuple(ENDPOINTS), default="completions")
    server.add_argument("--api_key_env", default="OPENAI_API_KEY", help="the key's env variable")
    server.add_argument("--concurrency", type=int, default=8)
    server.add_argument("--requests_per_minute", type=float)
    server.add_argument("--max_retries", type=int, default=6)
    server.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    server.add_argument("--backoff_base", type=float, default=1.0, help="first retry's delay")
    server.add_argument("--logprobs", type=int, metavar="K", help="store top-K token logprobs")
    model = parser.add_argument_group("seq2seq backend")
    model.add_argument("--checkpoint")
    model.add_argument("--vocabulary", help="SentencePiece model")
    model.add_argument("--batch_size", type=int, default=8)
    model.add_argument("--max_input_length", type=int, default=1024)
    model.add_argument("--model_parallelism", type=int, default=1)
    decoding = parser.add_argument_group("decoding and voting")
    decoding.add_argument("--samples", type=int, default=1, help="outputs per example")
    decoding.add_argument("--keep", choices=KEEP, default="vote")
    decoding.add_argument(
        "--min_confidence", type=float, help="keep outputs at least this sure (needs --logprobs)"
    )
    decoding.add_argument("--temperature", type=float, default=0.0)
    decoding.add_argument("--max_tokens", type=int, default=256)
    decoding.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    decoding.add_argument("--seed", type=int, help="sample j asks for seed + j")
    decoding.add_argument("--limit", type=int, help="annotate the first N examples only")
    topk = parser.add_argument_group("offline teacher: top-k log-probabilities (seq2seq)")
    topk.add_argument("--save_topk", type=int, metavar="K", help="score tasks' targets instead")
    topk.add_argument("--tasks", help="comma-separated SeqIO tasks whose targets to score")
    topk.add_argument("--task_module", action="append", help="a module adding tasks (repeatable)")
    topk.add_argument(
        "--train_fraction",
        type=float,
        default=1.0,
        help="score only the training subsample of runs with this TRAIN_FRACTION (and --seed "
        "as their SEED, default 0)",
    )
    console.setup(parser, argv)
    args = parser.parse_args(argv)
    if args.save_topk is not None and args.save_topk < 1:
        parser.error("--save_topk must be at least 1")
    if not 0 < args.train_fraction <= 1:
        parser.error(f"--train_fraction must be in (0, 1], got {args.train_fraction}")
    if args.save_topk is None and not (args.input and args.prompt):
        parser.error("--input and --prompt are required (unless --save_topk)")
    for name in (
        "concurrency",
        "samples",
        "batch_size",
        "max_tokens",
        "max_input_length",
        "exemplars",
        "candidates",
        "auto_samples",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.min_confidence is not None and args.logprobs is None:
        parser.error("--min_confidence needs --logprobs (the confidence comes from them)")
    if args.logprobs is not None and (args.logprobs < 0 or args.backend != "openai"):
        parser.error("--logprobs K is for --backend openai (its servers' top-K), K >= 0")
    if args.max_retries < 0 or (args.limit is not None and args.limit < 0):
        parser.error("--max_retries and --limit must not be negative")
    if args.timeout <= 0 or (
        args.requests_per_minute is not None and args.requests_per_minute <= 0
    ):
        parser.error("--timeout and --requests_per_minute must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_flags(sys.argv[1:] if argv is None else argv)
    if args.save_topk is not None:  # JAX and TensorFlow: imported only for this
        annotate_topk = console.quiet_import("dsbs_jax.programs.annotate_topk")
        return cli.exit_status(PROG, lambda: annotate_topk.run(args))
    return cli.exit_status(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
