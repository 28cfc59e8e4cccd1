# shellcheck shell=bash
# Shared by the launchers in launch/ (sourced, not run): the command line they all take,
# --dry-run, finding the binary, and the accelerator defaults of gpu.sh, slurm.sbatch and
# tpu_vm.sh.
#
# After sourcing it, a launcher names its options (without the leading --) in the arrays
# VALUE_OPTIONS and SWITCH_OPTIONS, then calls `parse_command_line "$@"`, which sets
#   OPTS[name]  each option given (a switch: 1), as `--name VALUE` or `--name=VALUE`
#   DRY_RUN     1 under --dry-run: commands are printed, one a line, and none is run
#   BINARY      the first argument that is not a launcher option
#   ARGS        the arguments after it, passed through untouched
# and adds NAME=VALUE settings for the command to ENV_VARS.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VALUE_OPTIONS=()
SWITCH_OPTIONS=()
declare -A OPTS=()
DRY_RUN=0
BINARY=
ARGS=()
ENV_VARS=()
PRINT_SUFFIX=
# The Python that runs helpers here: the repository's virtualenv, else the system's.
LOCAL_PYTHON=$REPO/.venv/bin/python
[[ -x $LOCAL_PYTHON ]] || LOCAL_PYTHON=python3

# The launcher's header comment (its first comment block) is its --help.
print_usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

usage_error() {
  echo "$(basename "$0"): $*" >&2
  echo "Run '$0 --help' for usage." >&2
  exit 2
}

parse_command_line() {
  local arg name
  while (($#)); do
    arg=$1
    name=${arg#--}
    name=${name%%=*}
    case $arg in
      --dry-run) DRY_RUN=1 ;;
      -h | --help)
        print_usage
        exit 0
        ;;
      -*)
        if [[ $arg == --* ]] && is_one_of "$name" "${SWITCH_OPTIONS[@]}" && [[ $arg != *=* ]]; then
          OPTS[$name]=1
        elif [[ $arg != --* ]] || ! is_one_of "$name" "${VALUE_OPTIONS[@]}"; then
          usage_error "unknown option $arg"
        elif [[ $arg == *=* ]]; then
          OPTS[$name]=${arg#*=}
        elif (($# > 1)); then
          shift
          OPTS[$name]=$1
        else
          usage_error "$arg needs a value"
        fi
        ;;
      *)
        BINARY=$arg
        shift
        ARGS=("$@")
        return
        ;;
    esac
    shift
  done
  usage_error "no binary given (for example dsbs-train)"
}

is_one_of() { # WORD CHOICE...
  local word=$1 choice
  shift
  for choice; do [[ $word != "$choice" ]] || return 0; done
  return 1
}

# BINARY as a path: the repository's .venv/bin first, then PATH.
resolve_binary() {
  if [[ $BINARY == */* ]]; then
    return
  elif [[ -x $REPO/.venv/bin/$BINARY ]]; then
    BINARY=$REPO/.venv/bin/$BINARY
  elif command -v "$BINARY" >/dev/null; then
    BINARY=$(command -v "$BINARY")
  else
    usage_error "$BINARY is neither in $REPO/.venv/bin nor on PATH (pip install -e . first)"
  fi
}

require_integer() { # NAME VALUE
  [[ $2 =~ ^[1-9][0-9]*$ ]] || usage_error "--$1 takes a positive integer, not '$2'"
}

# Print a command under --dry-run, otherwise run it: `run [NAME=VALUE ...] COMMAND [ARG ...]`.
run() {
  if ((DRY_RUN)); then print_command "$@"; else env "$@"; fi
}

# The same for a launcher's last command, which replaces the launcher (signals reach it).
run_last() {
  if ((DRY_RUN)); then print_command "$@"; else exec env "$@"; fi
}

print_command() {
  local line
  printf -v line '%q ' "$@"
  echo "${line% }$PRINT_SUFFIX"
}

# Something the user should know: a comment line in the --dry-run listing, else on stderr.
note() {
  if ((DRY_RUN)); then echo "# $*"; else echo "$(basename "$0"): $*" >&2; fi
}

# --log FILE: the last command's stdout and stderr also go to FILE (appended), unbuffered.
log_to() {
  [[ -n $1 ]] || return 0
  ENV_VARS+=(PYTHONUNBUFFERED=1)
  if ((DRY_RUN)); then
    PRINT_SUFFIX=" 2>&1 | tee -ai $(printf %q "$1")"
  else
    mkdir -p "$(dirname "$1")"
    exec > >(tee -ai "$1") 2>&1
  fi
}

# XLA on NVIDIA GPUs, as NVIDIA's JAX containers set it (docs.nvidia.com/jax-toolbox):
# 90% of each GPU's memory for JAX's pool (the rest for cuDNN, NCCL and CUDA) and
# collectives overlapped with compute. XLA_FLAGS already in the environment come last, so
# they win.
gpu_env() {
  ENV_VARS+=(
    "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
    "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true${XLA_FLAGS:+ $XLA_FLAGS}"
  )
}

# On accelerators dsbs-train computes in bfloat16 (parameters stay float32), unless
# --float32 or the command line binds T5Config.dtype itself. (dsbs-eval and dsbs-infer
# take the model's config from the checkpoint.)
accelerator_args() {
  local arg
  [[ ${BINARY##*/} == dsbs-train && -z ${OPTS[float32]:-} ]] || return 0
  for arg in "${ARGS[@]}"; do
    [[ $arg != --gin.*T5Config.dtype=* ]] || return 0
  done
  ARGS+=("--gin.T5Config.dtype='bfloat16'")
}

# dsbs-train on the TPU slice $1 gets the mesh that dsbs-fit measured to fit its model size
# there (dsbs_jax/meshes.py, which reads the gin files), unless the command line binds the
# mesh itself; a note says which mesh and why.
mesh_args() {
  local chosen
  [[ ${BINARY##*/} == dsbs-train ]] || return 0
  chosen=$(PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} "$LOCAL_PYTHON" -m dsbs_jax.meshes \
    --topology "$1" -- "${ARGS[@]}") || exit
  mapfile -t chosen <<<"$chosen"
  note "${chosen[0]}"
  ARGS+=("${chosen[@]:1}")
}

# Whether BINARY joins other hosts with jax.distributed (--coordinator_address ...).
joins_hosts() {
  case ${BINARY##*/} in dsbs-train | dsbs-eval | dsbs-infer) return 0 ;; *) return 1 ;; esac
}
