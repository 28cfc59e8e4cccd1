"""`dsbs-convert` by its former name: `python -m dsbs_jax.convert` and `from dsbs_jax import
convert` (users' gin files and scripts) reach `dsbs_jax.programs.convert`, the same module."""

import sys

from dsbs_jax.programs import convert as program

if __name__ == "__main__":
    sys.exit(program.main())
sys.modules[__name__] = program
