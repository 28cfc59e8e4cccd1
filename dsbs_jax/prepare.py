"""`dsbs-prepare` by its former name: `python -m dsbs_jax.prepare` and `from dsbs_jax import
prepare` (users' gin files and scripts) reach `dsbs_jax.programs.prepare`, the same module."""

import sys

from dsbs_jax.programs import prepare as program

if __name__ == "__main__":
    sys.exit(program.main())
sys.modules[__name__] = program
