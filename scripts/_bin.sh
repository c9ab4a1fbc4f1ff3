# Sourced by the wrapper scripts: finds the actor-infer binary (ACTOR_INFER_BIN, the clone's
# release build, or PATH) and the experiment (EXPERIMENT, default configs/default.yaml).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${ACTOR_INFER_BIN:-$root/target/release/actor-infer}
[ -x "$BIN" ] || BIN=$(command -v actor-infer || true)
[ -n "$BIN" ] || { echo "actor-infer is not built: run 'make build'" >&2; exit 2; }
EXPERIMENT=${EXPERIMENT:-$root/configs/default.yaml}
