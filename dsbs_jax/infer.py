"""`dsbs-infer` by its former name: `python -m dsbs_jax.infer` and `from dsbs_jax import
infer` (users' gin files and scripts) reach `dsbs_jax.programs.infer`, the same module."""

import sys

from dsbs_jax.programs import infer as program

if __name__ == "__main__":
    sys.exit(program.main())
sys.modules[__name__] = program
