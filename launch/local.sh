#!/usr/bin/env bash
# Run a dsbs binary on this host, on whatever devices JAX finds here.
#
# Usage: launch/local.sh [--cpu_devices N] [--log FILE] [--dry-run] BINARY [ARGS...]
#
#   --cpu_devices N  run on N CPU devices (JAX_PLATFORMS=cpu and
#                    XLA_FLAGS=--xla_force_host_platform_device_count=N), to try a
#                    data x model mesh without accelerators
#   --log FILE       also append the binary's stdout and stderr to FILE
#   --dry-run        print the command, one line, instead of running it
#
# BINARY (dsbs-train, dsbs-eval, ...) comes from the repository's .venv/bin, else from
# PATH; ARGS go to it untouched. The exit status is the binary's.
#
# Example: a 4 x 2 mesh on CPU
#   launch/local.sh --cpu_devices 8 --log /tmp/mesh.log dsbs-train \
#     --gin_file=gin/runs/quickstart.gin --gin.MODEL_DIR="'/tmp/dsbs_mesh'" \
#     --gin.train.model_parallelism=2
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VALUE_OPTIONS=(cpu_devices log)
parse_command_line "$@"
resolve_binary
if [[ -n ${OPTS[cpu_devices]:-} ]]; then
  require_integer cpu_devices "${OPTS[cpu_devices]}"
  ENV_VARS+=(
    JAX_PLATFORMS=cpu
    "XLA_FLAGS=--xla_force_host_platform_device_count=${OPTS[cpu_devices]}${XLA_FLAGS:+ $XLA_FLAGS}"
  )
fi
log_to "${OPTS[log]:-}"
run_last "${ENV_VARS[@]}" "$BINARY" "${ARGS[@]}"
