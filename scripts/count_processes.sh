#!/usr/bin/env bash
# The original team's count_processes.sh: `before` records server processes and port
# listeners, `after` compares and exits 1 if anything is left over.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
phase=${1:?usage: count_processes.sh before|after}
shift
exec "$BIN" doctor --experiment "$EXPERIMENT" count "$phase" "$@"
