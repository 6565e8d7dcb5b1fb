#!/usr/bin/env bash
# Install mount(8)'s helpers for `mount -t fuse.fusevol` and fstab lines (as root):
# /sbin/mount.fuse.fusevol and /sbin/umount.fuse.fusevol, run by the venv's python
# named on their first line, so they work with an empty PATH (as at boot).
set -euo pipefail
venv=${1:-${FUSEVOL_VENV:-/opt/fusevol}}
for helper in mount umount; do
    target=/sbin/$helper.fuse.fusevol
    tmp=$(mktemp "$target.XXXXXX")
    cat > "$tmp" <<SCRIPT
#!$venv/bin/python
# Installed by fusevol's scripts/install-mount-helpers.sh: ${helper}(8) runs it for fuse.fusevol.
import os, sys

try:
    from fusevol.cli.mount_helper import ${helper}_entry
except ImportError:  # a fusevol without the helpers: umount as if there were none
    if "$helper" == "umount":
        os.execv("/bin/umount", ["umount", "-i", *sys.argv[1:]])
    raise
${helper}_entry()
SCRIPT
    chmod 0755 "$tmp"
    mv -f "$tmp" "$target"
done
