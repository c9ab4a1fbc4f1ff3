#!/usr/bin/env bash
# Offline checks of the deployment files: no container engine and no cluster are needed (none
# runs on this project's CI machines). tests/deploy.rs runs this script inside `make test`.
#   1. docker/compose*.yml against the Compose specification's JSON schema (check-jsonschema's
#      vendored copy), strictly: an unknown key fails.
#   2. deploy/kubernetes/**.yaml against the Kubernetes 1.29 and 1.37 schemas
#      (kubernetes-validate --strict: an unknown field fails); deploy/kserve/*.yaml against
#      KServe's CRD schemas as its SDK's generated models carry them (scripts/check-kserve.py).
#   3. docker/prometheus.yml with promtool; the Grafana provisioning files parse.
#   4. deploy/nginx/actor-infer.conf with `nginx -t`.
#   5. The Dockerfiles parsed by BuildKit's own parser (PyPI `dockerfile`), and consistency:
#      the Dockerfiles' builders run what `make build` and CI run; runtime images
#      run as non-root with exec-form ENTRYPOINT and HEALTHCHECK; grace periods exceed the
#      shutdown budget of the config they run; probes and scrape targets point at what exists.
# The validators come from scripts/test-deps.sh (`make test-deps`).
#
#   scripts/check-deploy.sh --write-configmaps   rewrite deploy/kubernetes/{,gpu/}configmap.yaml
#                                                from configs/container.yaml and configs/cuda.yaml
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [ "${1:-}" = --write-configmaps ]; then
  write_configmap() { # out, name, config, what
    local key; key=$(basename "$3")
    {
      echo "# $4"
      echo "# Generated from $3 by scripts/check-deploy.sh --write-configmaps; tests/deploy.rs fails if"
      echo "# the two differ. Equivalent: kubectl create configmap $2 --from-file=$3"
      echo "apiVersion: v1"
      echo "kind: ConfigMap"
      echo "metadata:"
      echo "  name: $2"
      echo "  labels:"
      echo "    app.kubernetes.io/name: actor-infer"
      echo "data:"
      echo "  $key: |"
      sed -e 's/^\(.\)/    \1/' "$3"
    } >"$1"
  }
  write_configmap deploy/kubernetes/configmap.yaml actor-infer-config configs/container.yaml \
    "actor-infer's configuration, mounted at /opt/actor-infer/configs/ (deployment.yaml)."
  write_configmap deploy/kubernetes/gpu/configmap.yaml actor-infer-cuda-config configs/cuda.yaml \
    "The GPU variant's configuration, mounted at /opt/actor-infer/configs/ (gpu/deployment.yaml)."
  echo "[check-deploy] wrote deploy/kubernetes/configmap.yaml and deploy/kubernetes/gpu/configmap.yaml"
  exit 0
fi
venv=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}/deploy-check-venv
for tool in check-jsonschema kubernetes-validate python; do
  [ -x "$venv/bin/$tool" ] || { echo "check-deploy: $venv/bin/$tool is missing: run \`make test-deps\`" >&2; exit 1; }
done
say() { printf '[check-deploy] %s\n' "$*"; }

say "compose files against the Compose specification schema"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker/compose.yml docker/compose.cuda.yml \
  docker/compose.host.yml

manifests=(deploy/kubernetes/*.yaml deploy/kubernetes/gpu/*.yaml)
for version in 1.29.0 1.37.0; do
  say "Kubernetes manifests against the $version schemas (strict)"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
done

say "deploy/kserve/ against KServe's CRD schemas (its SDK's generated models) and the image"
kserve_venv=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}/kserve-check-venv
[ -x "$kserve_venv/bin/python" ] || { echo "check-deploy: $kserve_venv is missing: run \`make test-deps\`" >&2; exit 1; }
"$kserve_venv/bin/python" scripts/check-kserve.py

say "docker/prometheus.yml with promtool"
promtool check config docker/prometheus.yml

say "deploy/nginx/actor-infer.conf with nginx -t"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/nginx.conf" <<NGINX
pid $tmp/nginx.pid;
error_log $tmp/error.log;
events {}
http {
  access_log off;
  client_body_temp_path $tmp/client_body;
  proxy_temp_path $tmp/proxy;
  fastcgi_temp_path $tmp/fastcgi;
  uwsgi_temp_path $tmp/uwsgi;
  scgi_temp_path $tmp/scgi;
  include $root/deploy/nginx/actor-infer.conf;
}
NGINX
/usr/sbin/nginx -t -q -p "$tmp" -e "$tmp/error.log" -c "$tmp/nginx.conf"

say "consistency of Dockerfiles, compose, Kubernetes, Grafana and the configs"
"$venv/bin/python" - <<'PY'
import json, re, sys
from pathlib import Path
import dockerfile
import yaml

errors = []
def check(ok, what):
    if not ok:
        errors.append(what)

def load_yaml(path):
    return yaml.safe_load(Path(path).read_text())

KNOWN = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
         "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}

def dockerfile_stages(path):
    """[(stage name, [instruction])], parsed by BuildKit's own parser (PyPI `dockerfile`)."""
    stages = []
    for c in dockerfile.parse_file(path):
        check(c.cmd in KNOWN, f"{path}:{c.start_line}: unknown instruction {c.original}")
        if c.cmd == "FROM":
            v = [x.upper() if i == 1 else x for i, x in enumerate(c.value)]
            stages.append((c.value[2] if len(v) == 3 and v[1] == "AS" else None, []))
        if stages:
            stages[-1][1].append(c)
    return stages

def budget(config):
    return float(load_yaml(config).get("shutdown", {}).get("timeout_seconds", 10))

def seconds(s):
    m = re.fullmatch(r"(\d+)s", str(s))
    assert m, s
    return int(m.group(1))

# --- Dockerfiles: the builder runs exactly CI's build commands; the runtime is locked down.
make = Path("Makefile").read_text()
check("bash scripts/setup.sh" in make and "build --release --locked" in make,
      "Makefile: `make build` no longer runs scripts/setup.sh + cargo build --release --locked")
check("make test" in Path(".ci/run").read_text(), ".ci/run no longer runs make test")
for df, config in (("docker/Dockerfile", "configs/container.yaml"),
                   ("docker/Dockerfile.cuda", "configs/cuda.yaml")):
    stage_list = dockerfile_stages(df)
    stages = dict(stage_list)
    builder = stages.get("builder")
    check(builder is not None, f"{df}: no `AS builder` stage")
    runs = " && ".join(c.value[0] for c in builder or [] if c.cmd == "RUN")
    check("bash scripts/setup.sh" in runs, f"{df}: the builder does not run bash scripts/setup.sh")
    check("cargo build --release --locked" in runs,
          f"{df}: the builder does not run cargo build --release --locked")
    for c in (c for _, cs in stage_list for c in cs if c.cmd == "COPY"):
        src = [f for f in c.flags if f.startswith("--from=")]
        if src:
            check(src[0].split("=", 1)[1] in stages, f"{df}:{c.start_line}: COPY from an unknown stage")
        else:
            for path in c.value[:-1]:
                check(Path(path).exists(), f"{df}:{c.start_line}: COPY source {path} does not exist")
    runtime = {}
    for c in stage_list[-1][1]:
        runtime[c.cmd] = c
    user = runtime["USER"].value[0].split(":")[0] if "USER" in runtime else "root"
    check(user not in ("root", "0"), f"{df}: the runtime image runs as root")
    for key in ("ENTRYPOINT", "CMD"):
        check(key in runtime and runtime[key].json,
              f"{df}: {key} is not exec form (SIGTERM must reach actor-infer)")
    hc = runtime.get("HEALTHCHECK")
    check(hc is not None and hc.json and hc.value[:2] == ("CMD", "/opt/actor-infer/bin/healthcheck"),
          f"{df}: HEALTHCHECK is not the exec-form /ready probe")
    cmd = runtime["CMD"].value
    check(cmd[-1] == config, f"{df}: CMD runs {cmd[-1]}, expected {config}")
    check(Path(config).is_file(), f"{config} is missing")

# The CUDA image's builder is the CPU image's, line for line, so the two share its layers (the
# Rust build, docs/deploy.md); cuda-libs starts as the builder does, up to the set-up.
builders = {df: [c.original for c in dict(dockerfile_stages(df))["builder"]]
            for df in ("docker/Dockerfile", "docker/Dockerfile.cuda")}
check(builders["docker/Dockerfile"] == builders["docker/Dockerfile.cuda"],
      "docker/Dockerfile.cuda's builder stage differs from docker/Dockerfile's: they no longer share layers")
cuda_libs = [c.original for c in dict(dockerfile_stages("docker/Dockerfile.cuda"))["cuda-libs"]]
setup_at = builders["docker/Dockerfile"].index("RUN bash scripts/setup.sh") + 1
same_base = cuda_libs[0].split()[1] == builders["docker/Dockerfile"][0].split()[1]
check(same_base and cuda_libs[1:setup_at] == builders["docker/Dockerfile"][1:setup_at],
      "docker/Dockerfile.cuda: cuda-libs does not start as the builder does")

# --- compose: names, ports and grace periods agree with the configs and Prometheus/Grafana.
compose = load_yaml("docker/compose.yml")
svc = compose["services"]["actor-infer"]
cfg_path = svc["command"][svc["command"].index("--experiment") + 1]
container = load_yaml(cfg_path)
check(container["server"]["host"] == "0.0.0.0", f"{cfg_path}: server.host must be 0.0.0.0 in a container")
check(seconds(svc["stop_grace_period"]) > budget(cfg_path),
      f"compose: stop_grace_period {svc['stop_grace_period']} is not above {cfg_path}'s shutdown budget")
cuda_override = load_yaml("docker/compose.cuda.yml")["services"]["actor-infer"]
cuda_cfg = cuda_override["command"][-1]
check(seconds(svc["stop_grace_period"]) > budget(cuda_cfg),
      f"compose: stop_grace_period is not above {cuda_cfg}'s shutdown budget")
ports = {p.split(":")[1] for p in svc["ports"]}
check(ports == {str(container["server"]["http_port"]), str(container["server"]["grpc_port"])},
      f"compose: published ports {ports} are not the config's")
prom = load_yaml("docker/prometheus.yml")
targets = [t for sc in prom["scrape_configs"] for st in sc["static_configs"] for t in st["targets"]]
check(f"actor-infer:{container['server']['http_port']}" in targets,
      f"prometheus.yml scrapes {targets}, not the compose service actor-infer")
ds = load_yaml("docker/grafana/provisioning/datasources/prometheus.yml")["datasources"]
check(ds[0]["url"] == "http://prometheus:9090" and "prometheus" in compose["services"],
      "Grafana's datasource does not point at the compose Prometheus")
providers = load_yaml("docker/grafana/provisioning/dashboards/dashboards.yml")["providers"]
mounts = compose["services"]["grafana"]["volumes"]
check(any(m.endswith(":" + providers[0]["options"]["path"] + ":ro") or m.split(":")[1] == providers[0]["options"]["path"] for m in mounts),
      "the dashboards provider's path is not where compose mounts docker/grafana/dashboards")
dash = json.loads(Path("docker/grafana/dashboards/actor-infer.json").read_text())
uids = {d["uid"] for d in ds}
def datasource_uids(o):
    if isinstance(o, dict):
        d = o.get("datasource")
        if isinstance(d, dict) and d.get("type") == "prometheus":
            yield d.get("uid")
        for v in o.values():
            yield from datasource_uids(v)
    elif isinstance(o, list):
        for v in o:
            yield from datasource_uids(v)
check(set(datasource_uids(dash)) <= uids, "the dashboard names a datasource uid that is not provisioned")

# compose.host.yml: every service on the host's network, and the names the bridge resolved
# (Prometheus' scrape target, Grafana's datasource) mapped to loopback.
host = load_yaml("docker/compose.host.yml")["services"]
check(set(host) == set(compose["services"]), "compose.host.yml does not cover every service of compose.yml")
check(all(s.get("network_mode") == "host" for s in host.values()), "compose.host.yml: a service is not on the host's network")
def mapped(service, name):
    return f"{name}:127.0.0.1" in host[service].get("extra_hosts", [])
for t in targets:
    check(mapped("prometheus", t.split(":")[0]), f"compose.host.yml: Prometheus cannot resolve its target {t}")
ds_host = ds[0]["url"].split("//")[1].split(":")[0]
check(mapped("grafana", ds_host), f"compose.host.yml: Grafana cannot resolve its datasource host {ds_host}")

# --- Kubernetes: grace period > preStop + budget, probes, the ConfigMaps are the configs.
for dep_path, cm_path, cfg in (("deploy/kubernetes/deployment.yaml", "deploy/kubernetes/configmap.yaml", "configs/container.yaml"),
                                ("deploy/kubernetes/gpu/deployment.yaml", "deploy/kubernetes/gpu/configmap.yaml", "configs/cuda.yaml")):
    dep = load_yaml(dep_path)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    pause = int(pre[-1]) if pre[0] == "sleep" else 0
    check(pause > 0, f"{dep_path}: no preStop pause")
    check(pod["terminationGracePeriodSeconds"] > pause + budget(cfg),
          f"{dep_path}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} is not above preStop {pause} s + shutdown budget {budget(cfg)} s")
    check(c["readinessProbe"]["httpGet"]["path"] == "/ready", f"{dep_path}: readiness is not /ready")
    check(c["startupProbe"]["httpGet"]["path"] == "/ready", f"{dep_path}: startup is not /ready")
    check(c["livenessProbe"]["httpGet"]["path"] == "/health", f"{dep_path}: liveness is not /health")
    check(c["args"][-1] == cfg, f"{dep_path}: runs {c['args'][-1]}, expected {cfg}")
    cm = load_yaml(cm_path)
    key = Path(cfg).name
    check(cm["data"].get(key) == Path(cfg).read_text(), f"{cm_path}: data.{key} differs from {cfg} (regenerate it)")
    vol = [v for v in pod["volumes"] if "configMap" in v][0]
    check(vol["configMap"]["name"] == cm["metadata"]["name"], f"{dep_path}: mounts ConfigMap {vol['configMap']['name']}, not {cm['metadata']['name']}")
    host = load_yaml(cfg)["server"]["host"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    check(host == "0.0.0.0" or env.get("ACTOR_INFER__SERVER__HOST") == "0.0.0.0",
          f"{dep_path}: the server would bind {host}, unreachable from other pods")
    check(pod["securityContext"]["runAsNonRoot"] is True, f"{dep_path}: not runAsNonRoot")
gpu = load_yaml("deploy/kubernetes/gpu/deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
check(gpu["resources"]["limits"].get("nvidia.com/gpu") == 1, "gpu/deployment.yaml: no nvidia.com/gpu limit")
svc = [d for d in yaml.safe_load_all(Path("deploy/kubernetes/service.yaml").read_text())][0]
names = {p["name"]: p for p in svc["spec"]["ports"]}
check(set(names) == {"http", "grpc"} and names["grpc"].get("appProtocol") == "grpc", "service.yaml: http and grpc ports (appProtocol grpc)")
hpa = load_yaml("deploy/kubernetes/hpa.yaml")
check(hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == "actor-infer", "hpa.yaml: autoscaling/v2 on Deployment actor-infer")

if errors:
    print("\n".join("check-deploy: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print("consistency: ok")
PY
say "all checks passed"
