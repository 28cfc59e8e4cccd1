"""`dsbs-convert`: read a T5 checkpoint in any supported format and write it in another.

    dsbs-convert SOURCE DEST --to hf|orbax

SOURCE is a Hugging Face directory, a T5X legacy checkpoint or an Orbax checkpoint (see
`dsbs_jax.checkpoints.load`); `--to hf` writes a directory that transformers loads,
`--to orbax` one that `dsbs-train` starts from.
"""

import argparse
import sys

from dsbs_jax import checkpoints, cli, console, files

WRITERS = {"hf": checkpoints.save_hf, "orbax": checkpoints.save_orbax}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsbs-convert", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a Hugging Face dir, T5X checkpoint or Orbax checkpoint")
    parser.add_argument("dest", help="the directory to write (replaced if it exists)")
    parser.add_argument("--to", choices=sorted(WRITERS), required=True, help="output format")
    console.setup(parser, argv)
    args = parser.parse_args(argv)
    try:
        files.check_folder(args.dest, "DEST")
        config, params = checkpoints.load(args.source)
        WRITERS[args.to](args.dest, config, params)
    except (checkpoints.CheckpointError, cli.UsageError) as error:
        print(f"dsbs-convert: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.to} checkpoint to {args.dest}: {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
