#!/usr/bin/env bash
# Install fusevol (scripts/setup.sh) and run its Docker plugin daemon under systemd.
# Without systemd, run `fusevol serve` in the foreground (or under your own supervisor).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh"
install -m 0644 "$here/contrib/fusevol.service" /etc/systemd/system/fusevol.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now fusevol.service
    # dockerd looks plugins up by socket when a volume names the driver; nothing to restart.
    echo "fusevol.service running: docker volume create -d fusevol NAME"
else
    echo "systemd is not running here: start the plugin with 'fusevol serve'" >&2
fi
