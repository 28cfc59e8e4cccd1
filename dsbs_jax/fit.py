"""`dsbs-fit` by its former name: `python -m dsbs_jax.fit` and `from dsbs_jax import
fit` (users' gin files and scripts) reach `dsbs_jax.programs.fit`, the same module."""

import sys

from dsbs_jax.programs import fit as program

if __name__ == "__main__":
    sys.exit(program.main())
sys.modules[__name__] = program
