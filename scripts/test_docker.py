#!/usr/bin/env python3
"""The images and compose, checked from the outside as a user sees them (scripts/test-docker.sh
builds the images and runs this; `make test-docker`).

    test_docker.py cpu IMAGE            the CPU image: size, user, HEALTHCHECK, /embed parity,
                                        `docker stop` under load, `docker kill`
    test_docker.py cuda IMAGE           the CUDA image without a GPU: size, layout, the binary
                                        loads the CUDA half, parity on the CPU, device cuda exits 2
    test_docker.py compose PROM_IMAGE   docker/compose.yml (+ compose.host.yml): actor-infer
                                        healthy, Prometheus scraping it, `down` clean

Every container runs on the host's network (no bridge; traffic goes to 127.0.0.1 only) with the
label org.actor-infer.test, and is removed in a `finally` (scripts/test-docker.sh removes any
left with that label as well). Any failed check raises: the exit status is 1 and the reason is
printed. Figures go to stdout and, as JSON lines, to $FIGURES when set. Standard library only.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABEL = "org.actor-infer.test"
TOLERANCE = 1e-4  # per component, as tests/serve.rs
BUDGET_S = 10.0  # shutdown.timeout_seconds of configs/container.yaml and configs/cuda.yaml
STOP_TIMEOUT_S = 20  # docker stop -t / compose stop_grace_period (docs/deploy.md)
CLIENTS = 16


class Failed(Exception):
    pass


def check(ok, what):
    if not ok:
        raise Failed(what)


def say(msg):
    print(f"[test-docker] {msg}", flush=True)


def figure(section, **values):
    """Prints one result and appends it to $FIGURES (JSON lines) for the README's table."""
    say(f"{section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    path = os.environ.get("FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"section": section, **values}) + "\n")


def docker(*args, check_rc=True, timeout=600):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check_rc and r.returncode != 0:
        raise Failed(f"docker {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return r


def inspect(ref, fmt):
    return docker("inspect", "-f", fmt, ref).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port):
    """True when nothing listens on 127.0.0.1:port and the port can be bound on every address."""
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def request(port, method, path, body=None, timeout=30):
    """(status, parsed JSON or text); raises OSError when the connection fails or closes before
    any response (http.client.RemoteDisconnected is an OSError)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Connection": "close"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        text = r.read().decode()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text
    finally:
        conn.close()


def reference():
    doc = json.loads((ROOT / "tests/fixtures/minilm-reference.json").read_text())
    return [(c["text"], c["embedding"]) for c in doc["cases"]]


def max_diff(a, b):
    check(len(a) == len(b), f"embedding length {len(a)}, expected {len(b)}")
    return max(abs(x - y) for x, y in zip(a, b))


def parity(port):
    """/embed for every reference case one at a time, then all in one request; the largest
    component difference seen (fails above TOLERANCE)."""
    cases = reference()
    worst = 0.0
    for text, want in cases:
        status, body = request(port, "POST", "/embed", {"inputs": text})
        check(status == 200, f"/embed {text[:30]!r}: {status} {body}")
        check(len(body) == 1, f"/embed one text: {len(body)} rows")
        d = max_diff(body[0], want)
        check(d < TOLERANCE, f"/embed {text[:30]!r}: max diff {d} >= {TOLERANCE}")
        worst = max(worst, d)
    status, body = request(port, "POST", "/embed", {"inputs": [t for t, _ in cases]})
    check(status == 200 and len(body) == len(cases), f"/embed all cases: {status}, rows {len(body)}")
    for (text, want), got in zip(cases, body):
        d = max_diff(got, want)
        check(d < TOLERANCE, f"/embed batch {text[:30]!r}: max diff {d}")
        worst = max(worst, d)
    return worst, len(cases)


class Container:
    """`docker run -d` on the host's network; removed (forced) on exit from the `with`."""

    def __init__(self, image, name, env=(), args=(), entrypoint=None, rm=False):
        self.name = f"actor-infer-test-{os.getpid()}-{name}"
        cmd = ["run", "-d", "--name", self.name, "--label", LABEL, "--network", "host",
               "--stop-timeout", str(STOP_TIMEOUT_S)]
        if rm:
            cmd.append("--rm")
        for k, v in env:
            cmd += ["-e", f"{k}={v}"]
        if entrypoint:
            cmd += ["--entrypoint", entrypoint]
        self.started = time.monotonic()
        self.id = docker(*cmd, image, *args).stdout.strip()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        docker("rm", "-f", "-v", self.id, check_rc=False)

    def state(self, field):
        return inspect(self.id, "{{.State.%s}}" % field)

    def host_pid(self):
        return int(self.state("Pid"))

    def logs(self):
        r = docker("logs", self.id, check_rc=False)
        return r.stdout + r.stderr

    def wait_exit(self, limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.state("Running") == "false":
                return int(self.state("ExitCode"))
            time.sleep(0.1)
        raise Failed(f"{self.name} still running after {limit} s:\n{self.logs()[-3000:]}")


def serving_env(http_port, grpc_port):
    # configs/container.yaml binds 0.0.0.0:8080 inside its own network namespace; on the host's
    # network the test gives it free ports on loopback. The HEALTHCHECK reads the same variable.
    return [("ACTOR_INFER__SERVER__HOST", "127.0.0.1"),
            ("ACTOR_INFER__SERVER__HTTP_PORT", str(http_port)),
            ("ACTOR_INFER__SERVER__GRPC_PORT", str(grpc_port))]


def wait_ready(c, port, limit=180):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        check(c.state("Running") == "true", f"{c.name} exited while starting:\n{c.logs()[-3000:]}")
        try:
            if request(port, "GET", "/ready", timeout=2)[0] == 200:
                return time.monotonic() - c.started
        except OSError:
            pass
        time.sleep(0.1)
    raise Failed(f"{c.name} never ready:\n{c.logs()[-3000:]}")


def wait_healthy(c, limit=180):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = c.state("Health.Status")
        check(status != "unhealthy", f"{c.name} turned unhealthy:\n{c.logs()[-3000:]}")
        if status == "healthy":
            return time.monotonic() - c.started
        check(c.state("Running") == "true", f"{c.name} exited:\n{c.logs()[-3000:]}")
        time.sleep(0.2)
    raise Failed(f"{c.name} not healthy after {limit} s")


def image_size_mb(image):
    return round(int(inspect(image, "{{.Size}}")) / 1e6)


def uids(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return set(line.split()[1:])
    raise Failed(f"no Uid line for pid {pid}")


# ------------------------------------------------------------------------------------ load
class Load:
    """CLIENTS threads posting reference texts to /embed in a loop until the server goes away.
    Every answer is classified: 200 (must match the reference within TOLERANCE), 503
    shutting_down (refused while draining; only after the stop), or the connection refused or
    closed before any response (the listener is gone, or closed with the connection still unread
    in its backlog: never read by the server, as tests/stop.rs counts it; only after the stop).
    Anything else (another status, a wrong embedding, a failure before the stop, a timeout) is
    a lost request and fails the check."""

    def __init__(self, port):
        self.port = port
        self.cases = reference()
        self.stop_sent = None  # monotonic time of the stop, once sent
        self.lock = threading.Lock()
        self.ok = self.ok_after_stop = self.refused = self.gone = 0
        self.errors = []
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                        for i in range(CLIENTS)]

    def client(self, i):
        try:
            self.loop(i)
        except Exception as e:  # a bad body, a parse error: a lost request, not a dead thread
            with self.lock:
                self.errors.append(f"client {i}: {e!r}")

    def loop(self, i):
        n = i
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text, want = self.cases[n % len(self.cases)]
            n += 1
            sent = time.monotonic()
            try:
                status, body = request(self.port, "POST", "/embed", {"inputs": text}, timeout=30)
            except OSError as e:
                with self.lock:
                    if self.stop_sent is None:
                        self.errors.append(f"client {i}: {e!r} before the stop")
                    else:
                        self.gone += 1
                return
            with self.lock:
                if status == 200:
                    d = max_diff(body[0], want)
                    if d >= TOLERANCE:
                        self.errors.append(f"client {i}: wrong embedding (max diff {d})")
                        return
                    self.ok += 1
                    if self.stop_sent is not None and sent < self.stop_sent:
                        self.ok_after_stop += 1
                elif status == 503 and "shutting_down" in json.dumps(body) and self.stop_sent is not None:
                    self.refused += 1
                else:
                    self.errors.append(f"client {i}: {status} {str(body)[:200]}")
                    return
        with self.lock:
            self.errors.append(f"client {i}: the server never went away")

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        for t in self.threads:
            t.join(timeout=60)
            check(not t.is_alive(), "a load client hung")


def container_processes(cid):
    """Host pids of every process of the container (its cgroup), for the `docker kill` check."""
    pids = set()
    for procs in Path("/sys/fs/cgroup").glob(f"**/{cid}*/cgroup.procs"):
        pids |= {int(p) for p in procs.read_text().split()}
    if not pids:
        out = docker("top", cid, "-o", "pid").stdout.split()[1:]
        pids = {int(p) for p in out}
    return pids


# ------------------------------------------------------------------------------------ cpu
def check_cpu(image):
    config_user = inspect(image, "{{.Config.User}}")
    check(config_user.split(":")[0] not in ("", "0", "root"), f"{image} runs as {config_user!r}")
    check(inspect(image, "{{json .Config.Healthcheck}}") not in ("null", ""), f"{image}: no HEALTHCHECK")
    figure("cpu image", image=image, size_mb=image_size_mb(image), user=config_user)

    http_port, grpc_port = free_port(), free_port()
    with Container(image, "cpu", env=serving_env(http_port, grpc_port)) as c:
        ready_s = wait_ready(c, http_port)
        pid = c.host_pid()
        check(Path(f"/proc/{pid}/comm").read_text().strip() == "actor-infer",
              "PID 1 of the container is not actor-infer")
        ids = uids(pid)
        check(ids == {"10001"}, f"actor-infer runs with uids {ids}, expected 10001")
        healthy_s = wait_healthy(c)
        worst, n = parity(http_port)
        figure("cpu run", ready_s=round(ready_s, 1), healthy_s=round(healthy_s, 1), uid=10001,
               parity_cases=n, parity_max_diff=f"{worst:.2e}")

        # docker stop under load: SIGTERM to PID 1, which must drain and exit 0 in its budget.
        load = Load(http_port)
        load.start()
        time.sleep(3)
        with load.lock:
            check(not load.errors, f"errors under load before the stop: {load.errors[:3]}")
            before = load.ok
        t0 = time.monotonic()
        with load.lock:
            load.stop_sent = t0
        docker("stop", "-t", str(STOP_TIMEOUT_S), c.id, timeout=STOP_TIMEOUT_S + 30)
        stop_s = time.monotonic() - t0
        load.join()
        code = int(c.state("ExitCode"))
        log = c.logs()
        check(not load.errors, f"lost requests: {load.errors[:5]}")
        check(code == 0, f"docker stop: exit {code}:\n{log[-3000:]}")
        check(stop_s < BUDGET_S, f"docker stop took {stop_s:.1f} s, budget {BUDGET_S} s")
        check(c.state("OOMKilled") == "false", "OOM-killed")
        check("Shutdown complete" in log, f"no 'Shutdown complete' in the log:\n{log[-3000:]}")
        check(before > 0, "no request served before the stop")
        figure("cpu docker stop under load", clients=CLIENTS, exit_code=code,
               stop_s=round(stop_s, 2), served=load.ok, served_before_stop=before,
               in_flight_at_stop_served=load.ok_after_stop, refused_503=load.refused,
               closed_unread=load.gone, lost=0)

    # docker kill: SIGKILL, no stop at all; nothing of the container may remain.
    volumes_before = set(docker("volume", "ls", "-q").stdout.split())
    http_port, grpc_port = free_port(), free_port()
    with Container(image, "kill", env=serving_env(http_port, grpc_port), rm=True) as c:
        wait_ready(c, http_port)
        load = Load(http_port)
        load.start()
        time.sleep(1)
        pids = container_processes(c.id)
        check(pids, "no processes found for the container")
        with load.lock:
            load.stop_sent = time.monotonic()
        docker("kill", c.id)
        load.join()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if docker("ps", "-aq", "--filter", f"id={c.id}").stdout.strip() == "":
                break
            time.sleep(0.1)
        left = docker("ps", "-aq", "--filter", f"id={c.id}").stdout.strip()
        check(left == "", f"the --rm container is still listed after docker kill: {left}")
        def alive():
            return sorted(p for p in pids if Path(f"/proc/{p}").exists()
                          and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z")

        def shims():
            return subprocess.run(["pgrep", "-f", c.id], capture_output=True, text=True).stdout.split()

        deadline = time.monotonic() + 10
        while (alive() or shims()) and time.monotonic() < deadline:
            time.sleep(0.1)
        check(not alive(), f"processes of the killed container still run: {alive()}")
        check(not shims(), f"a containerd shim for the killed container still runs: {shims()}")
        for p in (http_port, grpc_port):
            check(port_free(p), f"port {p} still held after docker kill")
        volumes_after = set(docker("volume", "ls", "-q").stdout.split())
        check(volumes_after <= volumes_before, f"volumes left: {volumes_after - volumes_before}")
        figure("cpu docker kill", processes_killed=len(pids), containers_left=0, processes_left=0,
               ports_held=0, volumes_left=0, load_errors=len(load.errors))


# ------------------------------------------------------------------------------------ cuda
CUDA_FILES = ["cuda/torch/lib/libtorch_cuda.so", "cuda/torch/lib/libc10_cuda.so",
              "cuda/nvidia/cu13/lib/libcudart.so.13", "cuda/nvidia/cu13/lib/libcublas.so.13",
              "cuda/nvidia/cudnn/lib/libcudnn.so.9", "cuda/nvidia/nccl/lib/libnccl.so.2",
              "lib/libtorch_cpu.so", "lib/libc10.so", "bin/actor-infer", "bin/healthcheck",
              "models/all-MiniLM-L6-v2/model.safetensors", "configs/cuda.yaml"]


def check_cuda(image):
    config_user = inspect(image, "{{.Config.User}}")
    check(config_user.split(":")[0] not in ("", "0", "root"), f"{image} runs as {config_user!r}")
    env = inspect(image, "{{json .Config.Env}}")
    check("ACTOR_INFER_CUDA_LIBS=/opt/actor-infer/cuda/torch/lib" in env, f"{image}: env {env}")
    # Layout: the libraries are there, readable by the image's user, and none is missing for
    # the dynamic loader: ldd on libtorch_cuda.so inside the image finds every CUDA library
    # through its own rpath; the CPU half (lib/), which the binary has loaded before it, stands
    # on LD_LIBRARY_PATH for ldd alone.
    script = ("cd /opt/actor-infer && for f in " + " ".join(CUDA_FILES) +
              "; do test -r $f || echo MISSING $f; done; "
              "LD_LIBRARY_PATH=/opt/actor-infer/lib ldd cuda/torch/lib/libtorch_cuda.so "
              "| grep 'not found' || true; du -sm cuda | cut -f1")
    out = docker("run", "--rm", "--network", "host", "--label", LABEL, "--entrypoint", "bash",
                 image, "-c", script).stdout.split("\n")
    problems = [line for line in out if "MISSING" in line or "not found" in line]
    # libcuda.so.1 is the driver's, mounted by the NVIDIA Container Toolkit at run time.
    problems = [p for p in problems if "libcuda.so.1" not in p]
    check(not problems, f"{image} layout: {problems}")
    cuda_mb = int([line for line in out if line.strip()][-1])
    figure("cuda image", image=image, size_mb=image_size_mb(image), cuda_libs_mb=cuda_mb,
           user=config_user)

    # As shipped (configs/cuda.yaml: device cuda:0) without a GPU: exit 2, naming the driver
    # and where the CUDA half was loaded from.
    with Container(image, "cuda-refuse", env=serving_env(free_port(), free_port())) as c:
        code = c.wait_exit(120)
        log = c.logs()
        check(code == 2, f"device cuda:0 without a GPU: exit {code}, expected 2:\n{log[-3000:]}")
        check("no NVIDIA driver" in log, f"the refusal does not name the driver:\n{log[-3000:]}")
        check("/opt/actor-infer/cuda/torch/lib" in log,
              f"the refusal does not name the CUDA libraries it loaded:\n{log[-3000:]}")
    figure("cuda device cuda:0 without a GPU", exit_code=code, names="no NVIDIA driver")

    # device auto (f32, one instance) without a GPU: the CUDA half stays unloaded (nothing
    # could use it; it would only cost memory), and the server serves on the CPU with the
    # reference's numbers.
    http_port, grpc_port = free_port(), free_port()
    env = serving_env(http_port, grpc_port) + [
        ("ACTOR_INFER__MODEL__DEVICE", "auto"), ("ACTOR_INFER__MODEL__DTYPE", "f32"),
        ("ACTOR_INFER__MODEL__INSTANCES", "1")]
    with Container(image, "cuda-auto", env=env) as c:
        wait_ready(c, http_port)
        maps = Path(f"/proc/{c.host_pid()}/maps").read_text()
        loaded = sorted({line.split()[-1] for line in maps.splitlines()
                         if "/opt/actor-infer/cuda/" in line and ".so" in line})
        check(not loaded, f"device auto without a GPU mapped the CUDA half: {loaded[:10]}")
        log = c.logs()
        check("CUDA libraries not loaded (device: auto, and no GPU here to use them)" in log,
              f"no 'CUDA libraries not loaded' in the log:\n{log[-3000:]}")
        worst, _ = parity(http_port)
        docker("stop", "-t", str(STOP_TIMEOUT_S), c.id, timeout=STOP_TIMEOUT_S + 30)
        code = int(c.state("ExitCode"))
        check(code == 0, f"docker stop: exit {code}")
        figure("cuda device auto without a GPU", cuda_libraries_mapped=len(loaded),
               parity_max_diff=f"{worst:.2e}", stop_exit=code)


# ------------------------------------------------------------------------------------ compose
def compose(*args, env, files=("docker/compose.yml", "docker/compose.host.yml"), timeout=300):
    cmd = ["docker-compose", "-p", env["COMPOSE_PROJECT_NAME"]]
    for f in files:
        cmd += ["-f", str(f)]
    r = subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise Failed(f"{' '.join(cmd + list(args))} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


def effective_compose(env):
    """docker/compose.yml + docker/compose.host.yml as compose itself merges and interpolates
    them (`docker-compose config`), less the services' `ports`: on the host's network the engine
    discards published ports (Compose v2 passes them and the engine ignores them), but
    docker-compose 1.29's client refuses the combination outright ("host" network_mode is
    incompatible with port_bindings). Nothing else is changed; the file is kept in
    target/test-docker/ to be read."""
    text = compose("config", env=env)
    out, skipping = [], False
    for line in text.splitlines():
        if skipping and line.startswith(("    - ", "      ")):
            continue  # an item of a service's ports list
        skipping = line == "    ports:"
        if not skipping:
            out.append(line)
    path = ROOT / "target/test-docker/compose.effective.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path


def project_containers(project):
    return docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").stdout.split()


def check_compose(prometheus_image):
    project = f"actor-infer-test-{os.getpid()}"
    env = dict(os.environ, COMPOSE_PROJECT_NAME=project, PROMETHEUS_IMAGE=prometheus_image,
               BIND_ADDRESS="127.0.0.1")
    # The host's network: the ports are the services' own (configs/container.yaml, Prometheus).
    for port in (8080, 50051, 9090):
        check(port_free(port), f"port {port} is in use: docker/compose.yml needs it")
    version = subprocess.run(["docker-compose", "version", "--short"], capture_output=True,
                             text=True).stdout.strip()
    networks_before = set(docker("network", "ls", "-q").stdout.split())
    files = [effective_compose(env)]
    try:
        t0 = time.monotonic()
        # Grafana is not started: its image cannot be had here (docs/deploy.md).
        compose("up", "-d", "--no-build", "actor-infer", "prometheus", env=env, files=files)
        ids = {name: compose("ps", "-q", name, env=env, files=files).strip()
               for name in ("actor-infer", "prometheus")}
        check(all(ids.values()), f"compose did not start both services: {ids}")

        def healthy():
            return inspect(ids["actor-infer"], "{{.State.Health.Status}}") == "healthy"

        deadline = time.monotonic() + 180
        while not healthy():
            check(time.monotonic() < deadline, "actor-infer never healthy under compose")
            check(inspect(ids["actor-infer"], "{{.State.Running}}") == "true",
                  "actor-infer exited under compose:\n" + docker("logs", ids["actor-infer"]).stderr[-3000:])
            time.sleep(0.2)
        healthy_s = time.monotonic() - t0
        worst, _ = parity(8080)

        # Prometheus scrapes actor-infer:8080/metrics (docker/prometheus.yml) and sees the
        # requests just served.
        sent = 20
        for _ in range(sent):
            check(request(8080, "POST", "/embed", {"inputs": "scraped"})[0] == 200, "/embed failed")
        want = sent + 15  # the parity requests too
        deadline = time.monotonic() + 60
        target = None
        while True:
            try:
                _, targets = request(9090, "GET", "/api/v1/targets", timeout=5)
                target = next((t for t in targets["data"]["activeTargets"]
                               if t["labels"].get("job") == "actor-infer"), None)
                _, q = request(9090, "GET",
                               "/api/v1/query?query=sum(actor_infer_requests_total%7Boutcome%3D%22ok%22%7D)",
                               timeout=5)
                seen = float(q["data"]["result"][0]["value"][1]) if q["data"]["result"] else 0.0
                if target and target["health"] == "up" and seen >= want:
                    break
            except (OSError, KeyError, ValueError, TypeError):
                seen = None
            if time.monotonic() > deadline:
                log = docker("logs", "--tail", "20", ids["prometheus"], check_rc=False)
                raise Failed(f"Prometheus: target {target}, requests seen {seen}, expected >= "
                             f"{want}; its state {inspect(ids['prometheus'], '{{.State.Status}}')}, "
                             f"log:\n{log.stdout}{log.stderr}")
            time.sleep(1)
        scrape_s = time.monotonic() - t0
        figure("compose up", compose=version, prometheus_image=prometheus_image,
               actor_infer_healthy_s=round(healthy_s, 1), parity_max_diff=f"{worst:.2e}",
               prometheus_target=target["scrapeUrl"], target_health=target["health"],
               requests_seen_by_prometheus=int(seen), up_after_s=round(scrape_s, 1))

        # compose stop (what `down` does first) and the exit codes, then `down`.
        t1 = time.monotonic()
        compose("stop", env=env, files=files, timeout=STOP_TIMEOUT_S + 60)
        stop_s = time.monotonic() - t1
        codes = {n: int(inspect(i, "{{.State.ExitCode}}")) for n, i in ids.items()}
        check(codes["actor-infer"] == 0, f"actor-infer exited {codes['actor-infer']} under compose stop")
        check(stop_s < STOP_TIMEOUT_S, f"compose stop took {stop_s:.1f} s")
        compose("down", "--volumes", env=env, files=files)
        check(not project_containers(project), "containers left after compose down")
        networks_after = set(docker("network", "ls", "-q").stdout.split())
        check(networks_after == networks_before, f"networks left: {networks_after - networks_before}")
        for port in (8080, 50051, 9090):
            check(port_free(port), f"port {port} still held after compose down")
        figure("compose down", stop_s=round(stop_s, 1), exit_codes=codes, containers_left=0,
               networks_made=0, ports_held=0)
    finally:
        if project_containers(project):
            subprocess.run(["docker-compose", "-p", project, "-f", str(files[0]), "down",
                            "--volumes", "-t", "5"], cwd=ROOT, env=env, capture_output=True,
                           timeout=120)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("cpu", "cuda", "compose"):
        print(__doc__, file=sys.stderr)
        return 2
    what, arg = sys.argv[1:]
    try:
        {"cpu": check_cpu, "cuda": check_cuda, "compose": check_compose}[what](arg)
    except Failed as e:
        say(f"FAILED ({what}): {e}")
        return 1
    say(f"{what}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
