"""dsbs-jax: distilling step-by-step on the Google JAX stack."""

from dsbs_jax import console, hardware

console.quiet_native_logs()
hardware.quiet_absent_tpu()
