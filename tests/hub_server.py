"""A Hugging Face Hub on 127.0.0.1 serving local folders as model repositories, for tests of real downloads.

No machine here reaches huggingface.co; this speaks the part of the Hub's HTTP API that huggingface_hub's
`snapshot_download` uses (repository info, file tree, resolve with HEAD and GET), so that the real client code runs.
Repositories named `gated/...` are listed but their files answer 401, as on the real Hub; unknown ones answer
404. Weight files are sent after `delay_s`, a slow network.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    def __init__(self, repos: dict[str, Path], delay_s: float = 0.0) -> None:
        self.repos = repos
        self.delay_s = delay_s
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Hub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self, repo: str) -> list[Path]:
        return sorted(p for p in self.repos[repo].iterdir() if p.is_file())

    def answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = handler.path.split("?")[0]
        self.requests.append(f"{handler.command} {path}")
        if path.startswith("/api/models/"):
            rest = path.removeprefix("/api/models/")
            repo = "/".join(rest.split("/")[:2])
            tail = rest.split("/")[2:]
            if not self._known(handler, repo):
                return
            if tail[:1] == ["tree"]:
                listing = [
                    {"type": "file", "path": p.name, "size": p.stat().st_size, "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                    for p in self._files(repo)
                ]
                return self._json(handler, listing, body)
            info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "disabled": False,
                    "gated": "manual" if repo.startswith("gated/") else False,
                    "siblings": [{"rfilename": p.name} for p in self._files(repo)]}  # fmt: skip
            return self._json(handler, info, body)
        parts = path.strip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            if not self._known(handler, repo, files=True):
                return
            file = self.repos[repo] / name
            if not file.is_file():
                return self._status(handler, 404, "Entry not found")
            data = file.read_bytes()
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            handler.send_header("X-Repo-Commit", COMMIT)
            handler.end_headers()
            if body:
                if file.suffix == ".safetensors":
                    time.sleep(self.delay_s)
                handler.wfile.write(data)
            return None
        return self._status(handler, 404, "not found")

    def _known(self, handler: BaseHTTPRequestHandler, repo: str, files: bool = False) -> bool:
        # As the real Hub: a gated repository is listed to anyone (with "gated" set); its files answer 401.
        if repo.startswith("gated/") and files:
            self._status(handler, 401, "Access to model is restricted")
            return False
        if repo not in self.repos:
            self._status(handler, 404, "Repository not found")
            return False
        return True

    def _json(self, handler: BaseHTTPRequestHandler, data: object, body: bool) -> None:
        raw = json.dumps(data).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.end_headers()
        if body:
            handler.wfile.write(raw)

    def _status(self, handler: BaseHTTPRequestHandler, code: int, message: str) -> None:
        raw = json.dumps({"error": message}).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.send_header("X-Error-Message", message)
        handler.end_headers()
        handler.wfile.write(raw)
