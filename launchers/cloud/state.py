"""The run dir's crash-safe record of what exists at the provider: ``cloud_state.json``.

Each uploaded file id (keyed by the sha256 of the file's contents), the job id and the deployment are written
the moment they exist, atomically (temporary file, fsync, rename), so a rerun after a crash, a kill -9 or a
network drop attaches to them instead of paying again. No secret is ever stored here.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

FILE_NAME = "cloud_state.json"


class State:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / FILE_NAME
        if self.path.is_file():
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        else:
            self.data = {"run_id": uuid.uuid4().hex[:12], "files": {}, "job": None, "deployment": None}

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    @property
    def run_id(self) -> str:
        return self.data["run_id"]

    @property
    def job(self) -> dict[str, Any] | None:
        return self.data.get("job")

    def record(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def record_file(self, sha256: str, info: dict[str, Any]) -> None:
        self.data["files"][sha256] = info
        self.save()

    def update_job(self, **fields: Any) -> None:
        self.data["job"] = {**(self.data.get("job") or {}), **fields}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
