"""`dsbs-train` by its former name: `python -m dsbs_jax.train` and `from dsbs_jax import
train` (users' gin files and scripts) reach `dsbs_jax.programs.train`, the same module."""

import sys

from dsbs_jax.programs import train as program

if __name__ == "__main__":
    sys.exit(program.main())
sys.modules[__name__] = program
