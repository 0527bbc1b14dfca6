"""A fake of the Hugging Face Hub's upload API: a real HTTP server on 127.0.0.1 that huggingface_hub talks to when
HF_ENDPOINT points at it. It creates repos, answers preupload with "regular" (files travel inside the commit, as
base64) and stores each commit's files; every request must carry the expected bearer token.

    with FakeHub(token="hf_test") as hub:
        ... HF_ENDPOINT=hub.url HF_TOKEN=hf_test ...
        hub.repos["org/name"]["config.json"]  # bytes
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHub:
    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        #: Requests that came without the expected token: (method, path, Authorization header or None).
        self.unauthorized: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if method != "POST":
            return 404, {"error": f"{method} {path} is not faked"}
        if path == "/api/repos/create":
            args = json.loads(body)
            repo = f"{args['organization']}/{args['name']}" if args.get("organization") else args["name"]
            with self._lock:
                self.repos.setdefault(repo, {})
                self.private[repo] = args.get("visibility", "private" if args.get("private") else "public") == "private"
            return 200, {"url": f"{self.url}/{repo}"}
        match = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)/(?P<what>preupload|commit)/(?P<rev>[^/?]+)", path)
        if not match or match["repo"] not in self.repos:
            return 404, {"error": f"Repository not found: {path}"}
        if match["what"] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        with self._lock:
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    self.repos[match["repo"]][value["path"]] = base64.b64decode(value["content"])
        return 200, {
            "commitUrl": f"{self.url}/{match['repo']}/commit/0123abcd",
            "commitOid": "0123abcd",
            "success": True,
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("POST")

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def _serve(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if method == "GET":  # huggingface_hub's own look-ups (e.g. /api/agent-harnesses): not part of an upload
            status, answer = 404, {"error": f"{self.path} is not faked"}
        elif self.headers.get("Authorization") != f"Bearer {self.fake.token}":
            self.fake.unauthorized.append((method, self.path, self.headers.get("Authorization")))
            status, answer = 401, {"error": "Invalid credentials in Authorization header"}
        else:
            status, answer = self.fake.handle(method, self.path.split("?", 1)[0], body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass
