#!/usr/bin/env python3
"""A Hugging Face Hub stand-in on 127.0.0.1 for tests/hub.rs: it serves model folders under the
Hub's URL layout, with the routes and headers huggingface_hub 2.x and hf-hub read.

The real Hub cannot be reached from the test machines, so this server plays its part: every
folder given with --repo is one repository at one commit (a hash of its listing), reachable as
the branch `main`, the tag `v1.0` or the commit itself. Python standard library only.

Routes (what huggingface_hub's snapshot_download / hf_hub_download and hf-hub call):
- GET /api/models/{id}/revision/{rev}      repo info: `sha`, `siblings` ([{rfilename}])
- GET /api/models/{id}/tree/{rev}[/{path}] the file listing (`type`, `oid`, `size`, `path`,
                                           `lfs` for large files), `?recursive=true`
- HEAD/GET /{id}/resolve/{rev}/{file}      a small file: 200 with `X-Repo-Commit`, `ETag` (its git
                                           blob id), `Content-Length`, and `Range` honoured (206,
                                           `Content-Range`); a large (LFS) file: 302 to the "CDN"
                                           (a second port: another origin, as the Hub's CDN is)
                                           with `X-Linked-Etag` (its sha256), `X-Linked-Size`
- HEAD/GET /blobs/{sha256} on the CDN port the bytes, `Range` honoured
Errors as the Hub answers them: 401 `X-Error-Code: RepoNotFound` for an unknown repository,
404 `RevisionNotFound`, 404 `EntryNotFound` (with `X-Repo-Commit`), 401 `GatedRepo` for a
--gated repository asked without `Authorization: Bearer <--token>`.

Usage: hub_server.py --repo ORG/NAME=FOLDER [--repo ...] [--gated ORG/NAME] [--token T]
                     --port-file FILE [--log FILE]
Writes "HUB_PORT CDN_PORT" to --port-file once both listen; appends one JSON line per request
to --log. Stops on SIGTERM or SIGINT.
"""

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_THRESHOLD = 1_000_000  # bytes: larger files are served as LFS files, through the CDN
TAG = "v1.0"


class Repo:
    def __init__(self, repo_id, folder):
        self.id = repo_id
        self.files = {}  # path in repo -> dict(path on disk, size, oid, sha256, lfs)
        for root, dirs, names in os.walk(folder, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                disk = os.path.join(root, name)
                rel = os.path.relpath(disk, folder).replace(os.sep, "/")
                with open(disk, "rb") as f:
                    data = f.read()
                self.files[rel] = {
                    "disk": disk,
                    "size": len(data),
                    "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "lfs": len(data) > LFS_THRESHOLD,
                }
        listing = "".join(f"{p} {f['oid']}\n" for p, f in sorted(self.files.items()))
        self.commit = hashlib.sha1(listing.encode()).hexdigest()

    def resolves(self, rev):
        return rev in ("main", TAG, self.commit)


def parse_range(header, size):
    """(start, end) inclusive from `bytes=a-b` / `bytes=a-`, clamped to the file; None if absent."""
    if not header or not header.startswith("bytes="):
        return None
    first = header[len("bytes="):].split(",")[0]
    a, _, b = first.partition("-")
    if a == "":
        n = int(b)
        return (max(size - n, 0), size - 1)
    start = int(a)
    end = int(b) if b else size - 1
    return (start, min(end, size - 1))


def make_handler(state, is_cdn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the request log below replaces stderr lines
            pass

        def record(self, status):
            if state["log"]:
                line = json.dumps({
                    "server": "cdn" if is_cdn else "hub",
                    "method": self.command,
                    "path": self.path,
                    "status": status,
                    "auth": self.headers.get("Authorization") is not None,
                })
                with state["lock"], open(state["log"], "a") as f:
                    f.write(line + "\n")

        def send(self, status, headers=None, body=b"", length=None):
            self.record(status)
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def error(self, status, code, message, extra=None):
            headers = {"Content-Type": "application/json", "X-Error-Code": code,
                       "X-Error-Message": message}
            headers.update(extra or {})
            self.send(status, headers, json.dumps({"error": message}).encode())

        def send_file(self, disk, size, headers):
            rng = parse_range(self.headers.get("Range"), size)
            if rng is not None and rng[0] >= size:
                self.send(416, {"Content-Range": f"bytes */{size}"})
                return
            start, end = rng if rng is not None else (0, size - 1)
            with open(disk, "rb") as f:
                f.seek(start)
                body = f.read(end - start + 1) if size else b""
            headers = dict(headers, **{"Accept-Ranges": "bytes"})
            if rng is not None:
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                self.send(206, headers, body)
            else:
                self.send(200, headers, body)

        def authorised(self, repo):
            if repo.id not in state["gated"]:
                return True
            return self.headers.get("Authorization") == f"Bearer {state['token']}"

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
            if is_cdn:
                return self.cdn(parts)
            if parts[:2] == ["api", "models"]:
                return self.api(parts[2:], urllib.parse.parse_qs(url.query))
            if "resolve" in parts:
                i = parts.index("resolve")
                return self.resolve("/".join(parts[:i]), parts[i + 1:])
            self.error(404, "NotFound", f"no route {url.path}")

        def repo_or_error(self, repo_id, rev):
            repo = state["repos"].get(repo_id)
            if repo is None:
                self.error(401, "RepoNotFound", "Repository not found")
                return None
            if not self.authorised(repo):
                self.error(401, "GatedRepo",
                           f"Access to model {repo_id} is restricted. You must have access to it "
                           "and be authenticated to access it. Please log in.")
                return None
            if not repo.resolves(rev):
                self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return repo

        def api(self, parts, query):
            # {org}/{name}/revision/{rev} or {org}/{name}/tree/{rev}[/{path}]; the id may have
            # one part (legacy ids).
            for n in (2, 1):
                if len(parts) > n and parts[n] in ("revision", "tree"):
                    repo_id, kind, rest = "/".join(parts[:n]), parts[n], parts[n + 1:]
                    break
            else:
                return self.error(404, "NotFound", "no such API route")
            if not rest:
                return self.error(404, "NotFound", "no revision")
            rev = rest[0]
            repo = self.repo_or_error(repo_id, rev)
            if repo is None:
                return
            if kind == "revision":
                body = {
                    "_id": repo.commit[:24], "id": repo.id, "modelId": repo.id,
                    "sha": repo.commit, "private": False,
                    "gated": "manual" if repo.id in state["gated"] else False,
                    "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                    "library_name": "sentence-transformers",
                    "lastModified": "2026-01-01T00:00:00.000Z",
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                }
                return self.send(200, {"Content-Type": "application/json"},
                                 json.dumps(body).encode())
            prefix = "/".join(rest[1:])
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries, dirs = [], set()
            for path, f in sorted(repo.files.items()):
                if prefix and not path.startswith(prefix + "/"):
                    continue
                rel = path[len(prefix) + 1:] if prefix else path
                if "/" in rel:
                    top = (prefix + "/" if prefix else "") + rel.split("/")[0]
                    if top not in dirs:
                        dirs.add(top)
                        entries.append({"type": "directory", "oid": "0" * 40, "size": 0,
                                        "path": top})
                    if not recursive:
                        continue
                entry = {"type": "file", "oid": f["oid"], "size": f["size"], "path": path}
                if f["lfs"]:
                    entry["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": 134}
                entries.append(entry)
            self.send(200, {"Content-Type": "application/json"}, json.dumps(entries).encode())

        def resolve(self, repo_id, rest):
            if not rest:
                return self.error(404, "NotFound", "no revision")
            rev, path = rest[0], "/".join(rest[1:])
            repo = self.repo_or_error(repo_id, rev)
            if repo is None:
                return
            f = repo.files.get(path)
            common = {"X-Repo-Commit": repo.commit}
            if f is None:
                return self.error(404, "EntryNotFound", "Entry not found", common)
            if f["lfs"]:
                location = f"http://127.0.0.1:{state['cdn_port']}/blobs/{f['sha256']}"
                headers = dict(common, **{
                    "Location": location,
                    "ETag": f'"{f["oid"]}"',
                    "X-Linked-Etag": f'"{f["sha256"]}"',
                    "X-Linked-Size": str(f["size"]),
                })
                return self.send(302, headers)
            self.send_file(f["disk"], f["size"], dict(common, **{"ETag": f'"{f["oid"]}"'}))

        def cdn(self, parts):
            if len(parts) == 2 and parts[0] == "blobs":
                for repo in state["repos"].values():
                    for f in repo.files.values():
                        if f["sha256"] == parts[1]:
                            return self.send_file(f["disk"], f["size"],
                                                  {"ETag": f'"{f["sha256"]}"'})
            self.send(404, {}, b"no such blob")

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", action="append", default=[], help="ORG/NAME=FOLDER")
    ap.add_argument("--gated", action="append", default=[], help="a repo that needs --token")
    ap.add_argument("--token", default="")
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", default="")
    args = ap.parse_args()
    repos = {}
    for spec in args.repo:
        repo_id, _, folder = spec.partition("=")
        repos[repo_id] = Repo(repo_id, folder)
    state = {"repos": repos, "gated": set(args.gated), "token": args.token, "log": args.log,
             "lock": threading.Lock()}
    cdn = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state, True))
    state["cdn_port"] = cdn.server_address[1]
    hub = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state, False))
    for server in (cdn, hub):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{hub.server_address[1]} {cdn.server_address[1]}\n")
    os.replace(tmp, args.port_file)
    for repo in repos.values():
        print(f"hub_server: {repo.id} at commit {repo.commit}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    hub.shutdown()
    cdn.shutdown()


if __name__ == "__main__":
    main()
