#!/usr/bin/env bash
# The original team's check_metrics.sh, answered by `actor-infer doctor metrics`.
# EXPERIMENT=exp.yaml picks the ports; extra arguments go to the doctor (--http-port N ...).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_bin.sh"
exec "$BIN" doctor --experiment "$EXPERIMENT" metrics "$@"
