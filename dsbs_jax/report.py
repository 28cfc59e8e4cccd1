"""`dsbs-report` by its former name: `python -m dsbs_jax.report` and `from dsbs_jax import
report` (users' gin files and scripts) reach `dsbs_jax.programs.report`, the same module."""

import sys

from dsbs_jax.programs import report as program

if __name__ == "__main__":
    sys.exit(program.main())
sys.modules[__name__] = program
