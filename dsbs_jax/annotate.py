"""`dsbs-annotate` by its former name: `python -m dsbs_jax.annotate` and `from dsbs_jax import
annotate` (users' gin files and scripts) reach `dsbs_jax.programs.annotate`, the same module."""

import sys

from dsbs_jax.programs import annotate as program

if __name__ == "__main__":
    sys.exit(program.main())
sys.modules[__name__] = program
