#!/usr/bin/env bash
# Install medscale on this node with the JAX build that matches its accelerator.
#
#   bash tpu_setup/install.sh                      # detect: nvidia-smi -> cuda, TPU chips -> tpu, else cpu
#   bash tpu_setup/install.sh --accelerator cuda   # force (e.g. on a Slurm login node without GPUs)
#   bash tpu_setup/install.sh --install-python --bashrc   # what the Ray cluster YAMLs run
#
# Options (or environment variables):
#   --accelerator auto|cpu|cuda|tpu   MEDSCALE_ACCELERATOR   default auto
#   --venv PATH                       MEDSCALE_VENV          default <repo>/.venv
#   --python PATH                     MEDSCALE_PYTHON        interpreter for the venv (3.11 or 3.12)
#   --install-python                  Ubuntu only: apt-get python3.11 (deadsnakes PPA) if no 3.11/3.12 exists
#   --bashrc                          activate the venv from ~/.bashrc (so `ray start` and `medscale`
#                                     on this node are the venv's; the Ray cluster launcher sources it)
#   --force                           reinstall even if nothing changed
#   --detect                          only print the accelerator this node would get (cpu|cuda|tpu)
#
# What it does: creates the venv, installs the pinned versions from requirements.lock, then the
# package itself in editable mode with the extra `.[cuda]` or `.[tpu]` (none for cpu), constrained
# by the same lock so JAX stays at the pinned version. Idempotent: a stamp in the venv records the
# lock, pyproject.toml and accelerator it was built from; a rerun with nothing changed does nothing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$REPO/requirements.lock"
PYPROJECT="$REPO/pyproject.toml"
ACCEL="${MEDSCALE_ACCELERATOR:-auto}"
VENV="${MEDSCALE_VENV:-$REPO/.venv}"
PYTHON="${MEDSCALE_PYTHON:-}"
INSTALL_PYTHON=0
BASHRC=0
FORCE=0
DETECT_ONLY=0

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; }
die() { echo "install.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --accelerator) ACCEL="${2:?--accelerator needs a value}"; shift 2 ;;
    --venv) VENV="${2:?--venv needs a path}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs a path}"; shift 2 ;;
    --install-python) INSTALL_PYTHON=1; shift ;;
    --bashrc) BASHRC=1; shift ;;
    --force) FORCE=1; shift ;;
    --detect) DETECT_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ -f "$LOCK" ]] || die "$LOCK not found: run this from a medscale checkout"
[[ -f "$PYPROJECT" ]] || die "$PYPROJECT not found: run this from a medscale checkout"

# --- accelerator -------------------------------------------------------------------------------
has_tpu_chips() {
  # Same signals Ray uses: /dev/accel<N> character devices, or VFIO groups owned by Google's PCI
  # vendor id (newer TPU VMs). A /dev/accel *directory* is NVIDIA's (driver 570+), not a TPU.
  local dev group vendor
  for dev in /dev/accel*; do
    [[ -c "$dev" ]] && return 0
  done
  if [[ -d /dev/vfio ]]; then
    for group in /dev/vfio/[0-9]*; do
      [[ -e "$group" ]] || continue
      for vendor in /sys/kernel/iommu_groups/"$(basename "$group")"/devices/*/vendor; do
        [[ -r "$vendor" && "$(cat "$vendor")" == "0x1ae0" ]] && return 0
      done
    done
  fi
  # GCE metadata of a TPU VM names its accelerator type (v4-8, v5litepod-16, tpu7x-...).
  if command -v curl >/dev/null 2>&1; then
    local kind
    kind="$(curl -sf --max-time 2 -H 'Metadata-Flavor: Google' \
      http://metadata.google.internal/computeMetadata/v1/instance/attributes/accelerator-type 2>/dev/null || true)"
    [[ "$kind" =~ ^(v|tpu)[0-9]+[a-z]*-[0-9]+$ ]] && return 0
  fi
  return 1
}

detect_accelerator() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo cuda
  elif has_tpu_chips; then
    echo tpu
  else
    echo cpu
  fi
}

[[ "$ACCEL" == auto ]] && ACCEL="$(detect_accelerator)"
if [[ "$DETECT_ONLY" == 1 ]]; then echo "$ACCEL"; exit 0; fi
case "$ACCEL" in
  cpu) EXTRA="" ;;
  cuda) EXTRA="[cuda]" ;;   # pyproject: cuda = ["jax[cuda12]..."]
  tpu) EXTRA="[tpu]" ;;     # pyproject: tpu = ["jax[tpu]..."] (libtpu from PyPI)
  *) die "--accelerator must be auto, cpu, cuda or tpu (got $ACCEL)" ;;
esac

# --- python ------------------------------------------------------------------------------------
python_ok() { "$1" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' 2>/dev/null; }

find_python() {
  local candidate
  for candidate in "$PYTHON" python3.12 python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  if ! PY="$(find_python)"; then
    if [[ "$INSTALL_PYTHON" == 1 ]] && command -v apt-get >/dev/null 2>&1; then
      echo "[install] no Python 3.11/3.12 found: installing python3.11 from the deadsnakes PPA"
      sudo apt-get update -y -q
      sudo apt-get install -y -q software-properties-common
      sudo add-apt-repository -y ppa:deadsnakes/ppa
      sudo apt-get update -y -q
      sudo apt-get install -y -q python3.11 python3.11-venv python3.11-dev
      PY="$(command -v python3.11)"
    else
      die "medscale needs Python 3.11 or 3.12 (pyproject requires-python). Install one, or pass
  --python PATH, or rerun with --install-python on Ubuntu."
    fi
  fi
  echo "[install] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
python_ok "$VPY" || die "$VENV holds $("$VPY" -V 2>&1); medscale needs 3.11 or 3.12 (remove the venv or pass --venv)"

# --- install -----------------------------------------------------------------------------------
STAMP="$VENV/.medscale-install-stamp"
WANT="$("$VPY" - "$LOCK" "$PYPROJECT" <<'PYEOF'
import hashlib, sys
h = hashlib.sha256()
for path in sys.argv[1:]:
    h.update(open(path, "rb").read())
print(h.hexdigest())
PYEOF
) $ACCEL"
if [[ "$FORCE" == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/medscale" ]]; then
  echo "[install] up to date ($ACCEL) in $VENV"
else
  PIP=("$VPY" -m pip install --disable-pip-version-check -q)
  echo "[install] pinned dependencies from requirements.lock"
  "${PIP[@]}" -r "$LOCK"
  echo "[install] medscale (editable) with JAX for: $ACCEL"
  "${PIP[@]}" --no-build-isolation -c "$LOCK" -e "$REPO$EXTRA"
  echo "$WANT" > "$STAMP"
fi

if [[ "$BASHRC" == 1 ]]; then
  LINE="source \"$VENV/bin/activate\"  # medscale venv (tpu_setup/install.sh)"
  touch "$HOME/.bashrc"
  grep -qF "$LINE" "$HOME/.bashrc" || echo "$LINE" >> "$HOME/.bashrc"
fi

# Import check only: starting a backend here could grab the GPU/TPU from running work, and on a
# multi-host TPU slice it would wait for the other hosts. `ray status` and the README check devices.
case "$ACCEL" in
  cuda) CHECK='import jax, jax_plugins.xla_cuda12' ;;
  tpu) CHECK='import jax, libtpu' ;;
  *) CHECK='import jax' ;;
esac
"$VPY" -c "$CHECK; print('[install] JAX', jax.__version__, 'for $ACCEL')" \
  || die "JAX for $ACCEL does not import in $VENV (rerun with --force)"
echo "[install] done: $VENV/bin/medscale"
