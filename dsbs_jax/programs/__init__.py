"""The commands (`dsbs-train`, `dsbs-eval`, ...), one module each: flags and gin in, the
library called, results written. No program imports another (`lint-imports`); what they
share is in the library (`dsbs_jax.cli`, `gin_utils`, `settings`, `results`, `writers`).
The former module names (`dsbs_jax.train`, ...) reach these same modules."""
