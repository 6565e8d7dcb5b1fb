#!/usr/bin/env bash
# Install fusevol and what it needs on a Debian machine (run as root).
#   scripts/setup.sh          the driver: system packages, /opt/fusevol venv, /usr/local/bin/fusevol
#   scripts/setup.sh --test   the same plus what the tests use (docker.io, busybox, git, sqlite3, fio,
#                             rclone: the peer FUSE driver of the bench's quick mode, restic and
#                             borgbackup: the evolving-tree bench's peers, Ceph's monitor, OSD and
#                             radosgw: the S3 server the remote tests start, ...)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${FUSEVOL_VENV:-/opt/fusevol}

packages=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv)
extras=()
if [ "${1:-}" = "--test" ]; then
    packages+=(docker.io docker-compose busybox-static git sqlite3 fio attr tar rclone e2fsprogs
               restic borgbackup ceph-mon ceph-osd radosgw ceph-common)
    extras=("[test]")
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip >/dev/null
"$venv/bin/pip" install -q "$here${extras[0]:-}"
ln -sf "$venv/bin/fusevol" /usr/local/bin/fusevol
# `mount -t fuse.fusevol VOLUME DIR` and fstab lines.
"$here/scripts/install-mount-helpers.sh" "$venv"
# Containers run as other users reach volumes through allow_other.
grep -qs '^user_allow_other' /etc/fuse.conf || echo user_allow_other >> /etc/fuse.conf
echo "fusevol installed in $venv ($("$venv/bin/fusevol" --help >/dev/null && echo ok))"
