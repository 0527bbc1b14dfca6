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
from typing import Any

from tests.fake_http import FakeServer


class FakeHub(FakeServer):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        #: Requests that came without the expected token: (method, path, Authorization header or None).
        self.unauthorized: list[tuple[str, str, str | None]] = []

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict, dict[str, str]]:
        if method == "GET":  # huggingface_hub's own look-ups (e.g. /api/agent-harnesses): not part of an upload
            return 404, {"error": f"{raw_path} is not faked"}, {}
        if headers.get("Authorization") != f"Bearer {self.token}":
            self.unauthorized.append((method, raw_path, headers.get("Authorization")))
            return 401, {"error": "Invalid credentials in Authorization header"}, {}
        status, answer = self._answer(method, raw_path.split("?", 1)[0], body)
        return status, answer, {}

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
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
