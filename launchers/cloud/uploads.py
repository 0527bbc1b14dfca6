"""Upload a training file once: look in the run dir's state, then at the provider (by file name), then upload.

A file's name carries the run id and the sha256 of its contents, so a rerun that crashed between the provider
accepting the upload and the state file recording it finds the file at the provider instead of uploading again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from launchers.cloud.client import api_error, transient
from launchers.cloud.retrying import Retry
from launchers.cloud.state import State
from trainer.errors import UserError

log = logging.getLogger(__name__)
MAX_LIST_PAGES = 50


def provider_filename(state: State, split: str, sha256: str) -> str:
    return f"hydratune-{state.run_id}-{split}-{sha256[:16]}.jsonl"


def find_file(client: Any, retry: Retry, filename: str) -> Any | None:
    after = None
    for _ in range(MAX_LIST_PAGES):
        kwargs = {"purpose": "fine-tune", "limit": 100, **({"after": after} if after else {})}
        page = retry(client.files.list, what="list files", **kwargs)
        for f in page.data:
            if f.filename == filename and f.status not in ("error", "deleted"):
                return f
        if not page.has_more or not page.data:
            return None
        after = page.data[-1].id
    return None


def upload(client: Any, state: State, retry: Retry, path: Path, split: str, sha256: str) -> str:
    """The provider's id for this file's contents, uploading it only if no upload of it exists."""
    known = state.data["files"].get(sha256)
    if known:
        log.info("%s file already uploaded as %s", split, known["id"])
        return wait_processed(client, retry, known["id"])
    filename = provider_filename(state, split, sha256)
    data = path.read_bytes()
    attempt = 0
    while True:
        found = find_file(client, retry, filename)
        if found is not None:
            log.info("%s file found at the provider as %s (uploaded before a crash)", split, found.id)
            file_id = found.id
            break
        try:
            file_id = client.files.create(file=(filename, data, "application/jsonl"), purpose="fine-tune").id
            break
        except Exception as exc:  # noqa: BLE001 - transient errors retry after checking for the upload
            retry_it, retry_after = transient(exc)
            if not retry_it:
                raise api_error(exc, f"the upload of {path.name}") from exc
            if attempt >= retry.retries:
                raise
            retry.wait(attempt, retry_after)
            attempt += 1
    state.record_file(sha256, {"id": file_id, "split": split, "filename": filename, "bytes": len(data)})
    log.info("uploaded %s (%d bytes) as %s", path.name, len(data), file_id)
    return wait_processed(client, retry, file_id)


def wait_processed(client: Any, retry: Retry, file_id: str) -> str:
    for interval in retry.polls():
        f = retry(client.files.retrieve, file_id, what="file status")
        if f.status == "processed":
            return file_id
        if f.status in ("error", "failed", "deleted"):
            raise UserError(
                f"The provider could not process file {file_id} ({f.status}): "
                f"{getattr(f, 'status_details', None) or 'no details given'}."
            )
        time.sleep(interval)
    raise AssertionError("unreachable")
