"""`dsbs-eval` by its former name: `python -m dsbs_jax.eval` and `from dsbs_jax import
eval` (users' gin files and scripts) reach `dsbs_jax.programs.eval`, the same module."""

import sys

from dsbs_jax.programs import eval as program

if __name__ == "__main__":
    sys.exit(program.main())
sys.modules[__name__] = program
