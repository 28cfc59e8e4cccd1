#!/usr/bin/env bash
# Run a dsbs binary on every worker of a Cloud TPU VM slice, from this machine:
#   1. create the TPU VM, unless `gcloud compute tpus tpu-vm describe` finds it;
#   2. build a wheel of this repository, copy it and the gin files to every worker, and
#      install them with jax[tpu] in a Python 3.11 virtualenv there (~/dsbs-venv);
#   3. run BINARY ARGS on all workers at once; jax.distributed finds the workers itself.
#
# Usage: launch/tpu_vm.sh --name NAME --zone ZONE [--accelerator_type TYPE]
#          [--version VERSION] [--project PROJECT] [--spot] [--float32] [--dry-run]
#          BINARY [ARGS...]
#
#   --name NAME              the TPU VM
#   --zone ZONE              its zone, e.g. us-central2-b
#   --accelerator_type TYPE  the slice to create (default v4-8; v4-32 is 4 workers)
#   --version VERSION        TPU software version to create with (default
#                            tpu-ubuntu2204-base, for v4; v5e: v2-alpha-tpuv5-lite,
#                            v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
#   --project PROJECT        the Google Cloud project (default: gcloud's)
#   --spot                   create a Spot TPU VM
#   --float32                compute in float32; by default dsbs-train gets
#                            --gin.T5Config.dtype="'bfloat16'" (parameters stay float32)
#   --dry-run                print the gcloud commands instead of running any
#
# dsbs-train gets the mesh that dsbs-fit measured to fit its model size (the gin files'
# gin/models/ file) on TYPE: train.fsdp_parallelism and train.model_parallelism, from
# dsbs_jax/meshes.py. A command line that binds either keeps its own; a size or slice not
# measured keeps the gin files' mesh. A note (under --dry-run, a comment) says which.
#
# Workers share no disk: --gin.MODEL_DIR (and --gin.EVAL_OUTPUT_DIR) must be gs://
# paths, and the data should be too. Relative --gin_file paths resolve against the gin
# files copied to the workers.
#
# Example:
#   launch/tpu_vm.sh --name dsbs --zone us-central2-b --accelerator_type v4-32 \
#     dsbs-train --gin_file=models/t5_1_1_base.gin --gin_file=runs/train.gin \
#     --gin.MODEL_DIR="'gs://my-bucket/runs/cqa'" --gin.DATA_DIR="'gs://my-bucket/tfds'" ...
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VALUE_OPTIONS=(name zone accelerator_type version project)
SWITCH_OPTIONS=(spot float32)
parse_command_line "$@"
name=${OPTS[name]:-}
[[ -n $name ]] || usage_error "--name is required: the TPU VM to create or reuse"
[[ -n ${OPTS[zone]:-} ]] || usage_error "--zone is required, e.g. --zone us-central2-b"
[[ $BINARY =~ ^[A-Za-z0-9_.-]+$ ]] ||
  usage_error "BINARY is a command name such as dsbs-train (the workers' own), not $BINARY"
for arg in "${ARGS[@]}"; do
  if [[ $arg == --gin.MODEL_DIR=* || $arg == --gin.EVAL_OUTPUT_DIR=* ]]; then
    dir=${arg#*=}
    dir=${dir#[\'\"]}
    [[ $dir == gs://* ]] ||
      usage_error "${arg%%=*} must be a gs:// path (TPU workers share no disk): $arg"
  fi
done
accelerator_args
mesh_args "${OPTS[accelerator_type]:-v4-8}"

tpu_vm=(gcloud compute tpus tpu-vm)
where=("--zone=${OPTS[zone]}")
[[ -z ${OPTS[project]:-} ]] || where+=("--project=${OPTS[project]}")
create=("${tpu_vm[@]}" create "$name" "${where[@]}"
  "--accelerator-type=${OPTS[accelerator_type]:-v4-8}"
  "--version=${OPTS[version]:-tpu-ubuntu2204-base}")
[[ -z ${OPTS[spot]:-} ]] || create+=(--spot)

# 1. The TPU VM.
describe=("${tpu_vm[@]}" describe "$name" "${where[@]}")
if ((DRY_RUN)); then
  print_command "${describe[@]}"
  note "only if that describe fails (no such TPU VM):"
  print_command "${create[@]}"
elif "${describe[@]}" >/dev/null 2>&1; then
  note "reusing the TPU VM $name"
else
  run "${create[@]}"
fi

# 2. The package on every worker. The wheel holds no gin files: they go to ~/gin, which
# the run names as DSBS_GIN_DIR (dsbs_jax.gin_utils).
pyproject_value() { sed -n "s/^$1\$/\\1/p" "$REPO/pyproject.toml"; }
wheel=dsbs_jax-$(pyproject_value 'version = "\(.*\)"')-py3-none-any.whl
jax="jax[tpu]==$(pyproject_value ' *"jax==\(.*\)",')"
python=$(pyproject_value 'requires-python = ">=\([0-9.]*\),.*')
# shellcheck disable=SC2016 # $HOME is the worker's
venv='$HOME/dsbs-venv'
apt_install="sudo apt-get -qq update && sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y"
setup=$(
  cat <<EOF
[ -x $venv/bin/python ] || { $apt_install python$python-venv && python$python -m venv $venv; }
$venv/bin/pip install -q '$jax' \$HOME/$wheel
$venv/bin/pip install -q --no-deps --force-reinstall \$HOME/$wheel
EOF
)
run "$LOCAL_PYTHON" -m pip wheel --no-deps -w "$REPO/build/tpu_vm" "$REPO"
run "${tpu_vm[@]}" scp --recurse "$REPO/build/tpu_vm/$wheel" "$REPO/gin" "$name:" \
  "${where[@]}" --worker=all
run "${tpu_vm[@]}" ssh "$name" "${where[@]}" --worker=all --command="${setup//$'\n'/" && "}"

# 3. The run, on all workers at once.
# The gin files copied above; jax.distributed joins the workers (dsbs_jax.partitioning).
command="DSBS_GIN_DIR=\$HOME/gin DSBS_DISTRIBUTED=1 $venv/bin/$BINARY"
for arg in "${ARGS[@]}"; do command+=" $(printf %q "$arg")"; done
run_last "${tpu_vm[@]}" ssh "$name" "${where[@]}" --worker=all --command="$command"
