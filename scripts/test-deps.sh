#!/usr/bin/env bash
# What the test suite drives for real, installed once when missing (idempotent):
# - Debian packages (apt-get; needs root, as on CI machines): Chromium (the live dashboard is
#   tested in a headless browser), Prometheus (a real server scrapes a real actor-infer;
#   promtool checks the configs) and nginx (tests/rolling.rs: three replicas behind it,
#   restarted one after the other under load).
# - The offline validators of docker/ and deploy/ (scripts/check-deploy.sh), pinned, from PyPI
#   into a virtual environment in the cache: check-jsonschema (it ships the Compose
#   specification's schema), kubernetes-validate (it ships the Kubernetes schemas),
#   dockerfile (BuildKit's Dockerfile parser); in a venv of its own, KServe's SDK with the
#   Kubernetes client (their generated models are KServe's CRD schemas:
#   scripts/check-kserve.py checks deploy/kserve/ with them).
# - Triton's Python clients, tritonclient[http,grpc], pinned with every dependency, into a
#   venv of their own (tests/kserve.rs drives the server with them).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[test-deps] installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package may start a system Prometheus on :9090; the tests start their own.
  case " ${missing[*]} " in *" prometheus "*) pkill -x prometheus 2>/dev/null || true ;; esac
  # Likewise a system nginx on :80 (tests/rolling.rs starts its own, on free ports).
  case " ${missing[*]} " in *" nginx "*) /usr/sbin/nginx -s quit 2>/dev/null || true ;; esac
fi
# tests/rolling.rs proxies gRPC: Debian's nginx has the grpc module built in; say so plainly if
# a different build lacks it.
/usr/sbin/nginx -V 2>&1 | grep -q -- '--without-http_grpc_module' &&
  { echo "[test-deps] this nginx lacks the grpc module" >&2; exit 1; }

# ---------------------------------------------------------------- deploy validators
CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
DOCKERFILE_VERSION=3.4.0
venv=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}/deploy-check-venv
stamp="$venv/.complete-$CHECK_JSONSCHEMA_VERSION-$KUBERNETES_VALIDATE_VERSION-$DOCKERFILE_VERSION"
if [ ! -f "$stamp" ]; then
  echo "[test-deps] installing check-jsonschema, kubernetes-validate and dockerfile into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "dockerfile==$DOCKERFILE_VERSION"
  touch "$stamp"
fi

# ---------------------------------------------------------------- client packages
# The clients people already use, driven against the real server by tests/clients.rs: openai,
# huggingface_hub (with numpy, which its feature_extraction returns), grpcio with
# grpcio-reflection, and grpcio-tools (which generates a TEI gRPC client from proto/tei).
CLIENTS="openai==3.57.0 huggingface_hub==2.4.0 numpy==2.3.5 grpcio==1.85.3 grpcio-reflection==1.85.1 grpcio-tools==1.85.1"
cvenv=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}/clients-venv
cstamp="$cvenv/.complete-$(echo "$CLIENTS" | md5sum | cut -c1-12)"
if [ ! -f "$cstamp" ]; then
  echo "[test-deps] installing the client packages into $cvenv: $CLIENTS" >&2
  rm -rf "$cvenv"
  python3 -m venv "$cvenv"
  # shellcheck disable=SC2086
  "$cvenv/bin/python" -m pip install --quiet --disable-pip-version-check $CLIENTS
  touch "$cstamp"
fi

# ---------------------------------------------------------------- KServe's CRD models
# KServe's SDK without its dependencies (it is a model server: FastAPI, pandas, ...): only its
# generated CRD models are used, with the Kubernetes client's (and PyYAML, which it pulls in).
KSERVE_VERSION=0.21.0
KUBERNETES_CLIENT_VERSION=37.0.2
SIX_VERSION=1.17.0  # the models import it; kubernetes 37 no longer pulls it in
kserve_venv=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}/kserve-check-venv
kserve_stamp="$kserve_venv/.complete-$KSERVE_VERSION-$KUBERNETES_CLIENT_VERSION-$SIX_VERSION"
if [ ! -f "$kserve_stamp" ]; then
  echo "[test-deps] installing kserve (models only) and kubernetes into $kserve_venv" >&2
  rm -rf "$kserve_venv"
  python3 -m venv "$kserve_venv"
  "$kserve_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes==$KUBERNETES_CLIENT_VERSION" "six==$SIX_VERSION"
  "$kserve_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    "kserve==$KSERVE_VERSION"
  touch "$kserve_stamp"
fi

# ---------------------------------------------------------------- Triton's clients
# tritonclient 2.73.0 and exactly what it pulled in when the tests were written.
client_pins=(
  tritonclient[http,grpc]==2.73.0 numpy==2.4.6 grpcio==1.85.3 protobuf==6.33.6
  geventhttpclient==2.6.1 gevent==26.9.0 greenlet==3.3.2 brotli==1.2.1 certifi==2026.10.19.post1
  python-rapidjson==1.25 urllib3==2.8.0 packaging==26.4 aiohttp==3.14.5 aiohappyeyeballs==2.7.1
  aiosignal==1.4.0 attrs==26.1.0 frozenlist==1.8.0 multidict==7.2.1 propcache==0.5.4
  yarl==1.25.1 idna==3.20 ml_dtypes==0.5.4 typing_extensions==4.16.0 zope.event==6.2
  zope.interface==8.7
)
client_venv=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}/tritonclient-venv
client_stamp="$client_venv/.complete-$(echo "${client_pins[*]}" | sha256sum | cut -c1-16)"
if [ ! -f "$client_stamp" ]; then
  echo "[test-deps] installing tritonclient[http,grpc] into $client_venv" >&2
  rm -rf "$client_venv"
  python3 -m venv "$client_venv"
  "$client_venv/bin/python" -m pip install --quiet --disable-pip-version-check "${client_pins[@]}"
  touch "$client_stamp"
fi

# ---------------------------------------------------------------- schemathesis
# The OpenAPI contract test (tests/openapi.rs): schemathesis 4.32.5 and exactly what it pulled
# in when the test was written.
st_pins=(
  schemathesis==4.32.5 anyio==4.16.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3
  click==8.5.1 graphql-core==3.3.2 harfile==0.6.0 hypothesis==6.170.17 hypothesis-graphql==0.13.5
  idna==3.20 iniconfig==2.3.1 jsonschema_rs==0.60.3 markdown-it-py==4.3.0 MarkupSafe==3.0.4
  mdurl==0.1.2 packaging==26.4 pluggy==1.7.0 Pygments==2.21.0 pyrate-limiter==4.5.1
  pytest==9.2.0 PyYAML==6.0.4 requests==2.34.2 rich==15.0.0 sortedcontainers==2.4.0
  typing_extensions==4.16.0 urllib3==2.8.0 Werkzeug==3.1.9
)
st_venv=${ACTOR_INFER_CACHE:-$HOME/.cache/actor-infer}/schemathesis-venv
st_stamp="$st_venv/.complete-$(echo "${st_pins[*]}" | sha256sum | cut -c1-16)"
if [ ! -f "$st_stamp" ]; then
  echo "[test-deps] installing schemathesis into $st_venv" >&2
  rm -rf "$st_venv"
  python3 -m venv "$st_venv"
  "$st_venv/bin/python" -m pip install --quiet --disable-pip-version-check "${st_pins[@]}"
  touch "$st_stamp"
fi
