#!/usr/bin/env bash
# The original team's monitor_processes.sh: one line every 2 s until interrupted
# (`actor-infer doctor watch processes`).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
exec "$BIN" doctor --experiment "$EXPERIMENT" watch processes "$@"
