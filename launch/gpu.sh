#!/usr/bin/env bash
# Run a dsbs binary on one host with all its NVIDIA GPUs (or those --gpus names): every
# GPU joins the mesh's data axis (the binary lays out the mesh; add
# --gin.train.model_parallelism=N to split each layer over N GPUs as well).
#
# Usage: launch/gpu.sh [--gpus LIST] [--float32] [--log FILE] [--dry-run] BINARY [ARGS...]
#
#   --gpus LIST  only these GPUs, as indices: 0,1,2,3 (sets CUDA_VISIBLE_DEVICES)
#   --float32    compute in float32; by default dsbs-train gets
#                --gin.T5Config.dtype="'bfloat16'" (parameters stay float32)
#   --log FILE   also append the binary's stdout and stderr to FILE
#   --dry-run    print the command instead of running it (nvidia-smi is optional then)
#
# Sets XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 and
# XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true (values already in the
# environment win). BINARY comes from the repository's .venv/bin, else from PATH.
#
# Example:
#   launch/gpu.sh --log /runs/cqa.log dsbs-train --gin_file=models/t5_1_1_base.gin \
#     --gin_file=runs/train.gin --gin.MODEL_DIR="'/runs/cqa'" ...
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VALUE_OPTIONS=(gpus log)
SWITCH_OPTIONS=(float32)
parse_command_line "$@"
resolve_binary
if [[ -n ${OPTS[gpus]:-} ]]; then
  [[ ${OPTS[gpus]} =~ ^[0-9]+(,[0-9]+)*$ ]] ||
    usage_error "--gpus takes GPU indices such as 0,1,2,3, not '${OPTS[gpus]}'"
  ENV_VARS+=("CUDA_VISIBLE_DEVICES=${OPTS[gpus]}")
fi

if command -v nvidia-smi >/dev/null && gpus=$(nvidia-smi -L); then
  note "$(grep -c '^GPU ' <<<"$gpus") GPUs on this host (nvidia-smi -L)"
elif ((DRY_RUN)); then
  note "GPUs on this host: unknown (nvidia-smi is missing or failed)"
else
  echo "$(basename "$0"): no NVIDIA GPU found (nvidia-smi -L is missing or failed)" >&2
  exit 1
fi
gpu_env
accelerator_args
log_to "${OPTS[log]:-}"
run_last "${ENV_VARS[@]}" "$BINARY" "${ARGS[@]}"
