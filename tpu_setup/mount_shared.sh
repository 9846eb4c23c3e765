#!/usr/bin/env bash
# Mount the shared NFS export that holds the medscale run store, at the same path on every node.
#
#   bash tpu_setup/mount_shared.sh SERVER:/EXPORT MOUNTPOINT [NFS_OPTIONS]
#   bash tpu_setup/mount_shared.sh 10.0.0.2:/medscale /mnt/medscale            # Filestore / NFS
#
# The run store (`medscale sweep ... --out DIR`) must be one POSIX file system seen by every node
# under the same absolute path: run folders, leases (O_EXCL files), status and checkpoints live
# there, and Ray tasks receive absolute run paths. Filestore or any NFS server works. Idempotent:
# does nothing if MOUNTPOINT is already a mount point. Needs sudo; installs nfs-common with apt-get
# when mount.nfs is missing.
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; }
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then usage; exit 0; fi
if [[ $# -lt 2 ]]; then usage >&2; exit 1; fi
SOURCE="$1"
MOUNTPOINT="$2"
OPTIONS="${3:-rw,hard,timeo=600,retrans=3}"

if [[ "$SOURCE" == *REPLACE_ME* ]]; then
  echo "mount_shared.sh: edit the cluster YAML: replace $SOURCE with your NFS/Filestore export" >&2
  exit 1
fi

if mountpoint -q "$MOUNTPOINT"; then
  echo "[mount] $MOUNTPOINT already mounted"
  exit 0
fi
if ! command -v mount.nfs >/dev/null 2>&1; then
  sudo apt-get update -y -q && sudo apt-get install -y -q nfs-common
fi
sudo mkdir -p "$MOUNTPOINT"
sudo mount -t nfs -o "$OPTIONS" "$SOURCE" "$MOUNTPOINT"
if [[ ! -w "$MOUNTPOINT" ]]; then
  # A fresh Filestore share is owned by root: give it to this (cluster-wide) user.
  sudo chown "$(id -u):$(id -g)" "$MOUNTPOINT" \
    || echo "[mount] warning: $MOUNTPOINT is not writable by $(id -un); fix its ownership on the server" >&2
fi
echo "[mount] $SOURCE on $MOUNTPOINT"
