"""Validates deploy/kserve/*.yaml against KServe's CRD schemas, offline.

KServe publishes no CRD YAML on PyPI or npm; its Python SDK (PyPI `kserve`) ships the models
generated from the same OpenAPI definitions as its CRDs (`kserve.models`, with the Kubernetes
API types from the `kubernetes` client). This walks each manifest against those models strictly:
an unknown field, a wrong type, a value outside an enum or a missing required field fails, as
`kubectl apply` with server-side validation would. Then it checks that the two manifests agree
with each other and with the image (model format, protocol, runtime name, model name, ports,
probe path, the config the container runs).

Run by scripts/check-deploy.sh with the venv scripts/test-deps.sh makes (kserve-check-venv).
"""

import os
import re
import sys
import types
from pathlib import Path

import yaml

# Import kserve.models without kserve/__init__.py, which imports a whole model server
# (FastAPI, pandas, ...) that this venv does not hold on purpose.
site = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(os.path.join(p, "kserve")))
package = types.ModuleType("kserve")
package.__path__ = [os.path.join(site, "kserve")]
sys.modules["kserve"] = package
import kserve.models as kserve_models  # noqa: E402
from kserve.configuration import Configuration as KserveConfiguration  # noqa: E402
import kubernetes.client.models as k8s_models  # noqa: E402
from kubernetes.client.configuration import Configuration as K8sConfiguration  # noqa: E402

KINDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}

errors = []


def model(name):
    for module, config in ((kserve_models, KserveConfiguration), (k8s_models, K8sConfiguration)):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls, config
    return None, None


def check(value, typ, path):
    typ = typ.strip()
    m = re.fullmatch(r"(?:list|List)\[(.*)\]", typ)
    if m:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list ({typ}), got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            check(v, m.group(1), f"{path}[{i}]")
        return
    m = re.fullmatch(r"dict\((\w+), (.*)\)", typ) or re.fullmatch(r"Dict\[(\w+), (.*)\]", typ)
    if m:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map ({typ}), got {type(value).__name__}")
            return
        for k, v in value.items():
            check(v, m.group(2), f"{path}.{k}")
        return
    if typ == "str":
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {value!r} (quote it)")
        return
    if typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected an integer, got {value!r}")
        return
    if typ == "bool":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {value!r}")
        return
    if typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected a number, got {value!r}")
        return
    if typ in ("object", "datetime"):
        return
    if typ in ("ResourceQuantity", "IntOrString"):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            errors.append(f"{path}: expected a quantity or an int-or-string, got {value!r}")
        return
    cls, config = model(typ)
    if cls is None:
        errors.append(f"{path}: the schema names a type this checker cannot find: {typ}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({typ}), got {value!r}")
        return
    if hasattr(cls, "model_validate"):
        # The kubernetes client's models are pydantic models with unknown fields forbidden:
        # they check the whole subtree (types, required fields, enums) themselves.
        try:
            cls.model_validate(value)
        except Exception as e:  # pydantic.ValidationError
            for err in getattr(e, "errors", lambda: [{"loc": (), "msg": str(e)}])():
                loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])
                errors.append(f"{path}{loc} ({typ}): {err['msg']}")
        return
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key, v in value.items():
        attr = by_json.get(key)
        if attr is None:
            errors.append(f"{path}.{key}: unknown field (not in {typ})")
            continue
        check(v, cls.openapi_types[attr], f"{path}.{key}")
    # Required fields and enums: the generated constructors check them.
    known = {by_json[k]: v for k, v in value.items() if k in by_json}
    strict = config()
    strict.client_side_validation = True
    try:
        cls(local_vars_configuration=strict, **known)
    except (ValueError, TypeError) as e:
        errors.append(f"{path} ({typ}): {e}")


root = Path(__file__).resolve().parent.parent
manifests = {}
for path in sorted((root / "deploy/kserve").glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = KINDS.get(key)
        where = f"{path.relative_to(root)}"
        if name is None:
            errors.append(f"{where}: {key} is not a KServe kind this checker knows")
            continue
        check(doc, name, where)
        manifests[doc["kind"]] = doc


def fail():
    print("\n".join("check-kserve: " + e for e in errors), file=sys.stderr)
    sys.exit(1)


if errors:
    fail()

# --- The manifests agree with each other and with the image.
runtime, isvc = manifests.get("ServingRuntime"), manifests.get("InferenceService")
if runtime is None or isvc is None:
    errors.append("deploy/kserve/ needs a ServingRuntime and an InferenceService")
else:
    m = isvc.get("spec", {}).get("predictor", {}).get("model", {})
    formats = {f.get("name") for f in runtime["spec"].get("supportedModelFormats", [])}
    if m.get("runtime") != runtime["metadata"]["name"]:
        errors.append(f"the InferenceService asks for runtime {m.get('runtime')}, not {runtime['metadata']['name']}")
    if m.get("modelFormat", {}).get("name") not in formats:
        errors.append(f"the InferenceService's modelFormat is not one the runtime supports: {formats}")
    if m.get("protocolVersion", "v1") not in runtime["spec"]["protocolVersions"]:
        errors.append(f"protocolVersion {m.get('protocolVersion')} is not in the runtime's protocolVersions")
    env = {e["name"]: e.get("value") for e in m.get("env", [])}
    if env.get("ACTOR_INFER__MODEL__NAME") != isvc["metadata"]["name"]:
        errors.append("ACTOR_INFER__MODEL__NAME must be the InferenceService's name: KServe's v2 paths use it")
    (container,) = runtime["spec"]["containers"]
    if container["name"] != "kserve-container":
        errors.append("the runtime's container must be named kserve-container")
    renv = {e["name"]: e.get("value") for e in container.get("env", [])}
    if renv.get("ACTOR_INFER__MODEL__PATH") != "/mnt/models":
        errors.append("ACTOR_INFER__MODEL__PATH must be /mnt/models, where KServe's storage initializer puts the model")
    args = container["args"]
    config = args[args.index("--experiment") + 1]
    if not (root / config).is_file():
        errors.append(f"the container runs {config}, which the image does not have")
    else:
        server = yaml.safe_load((root / config).read_text())["server"]
        ports = {p["containerPort"] for p in container["ports"]}
        if server["http_port"] not in ports:
            errors.append(f"{config} serves HTTP on {server['http_port']}, the runtime exposes {ports}")
        if server["host"] != "0.0.0.0":
            errors.append(f"{config} binds {server['host']}: unreachable from outside the pod")
    if container["readinessProbe"]["httpGet"]["path"] != "/v2/health/ready":
        errors.append("the readiness probe must be the protocol's /v2/health/ready")

if errors:
    fail()
from importlib.metadata import version  # noqa: E402

print(f"check-kserve: {', '.join(sorted(manifests))} valid against kserve {version('kserve')}'s "
      f"models (kubernetes client {version('kubernetes')}) and consistent with the image")
