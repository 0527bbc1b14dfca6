"""Upload a training file once: look in the run dir's state, then at the provider (by file name), then upload.

A file's name carries the run id and the sha256 of its contents, so a rerun that crashed between the provider
accepting the upload and the state file recording it finds the file at the provider instead of uploading again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from launchers.cloud.client import api_error, transient
from launchers.cloud.provider import Provider
from launchers.cloud.retrying import Retry
from launchers.cloud.state import State
from trainer.config.errors import UserError

log = logging.getLogger(__name__)


def provider_filename(state: State, split: str, sha256: str) -> str:
    return f"hydratune-{state.run_id}-{split}-{sha256[:16]}.jsonl"


def upload(provider: Provider, state: State, retry: Retry, path: Path, split: str, sha256: str) -> str:
    """The provider's id for this file's contents, uploading it only if no upload of it exists."""
    known = state.data["files"].get(sha256)
    if known:
        log.info("%s file already uploaded as %s", split, known["id"])
        return wait_processed(provider, retry, known["id"])
    filename = provider_filename(state, split, sha256)
    size = path.stat().st_size
    attempt = 0
    while True:
        found = provider.find_file(retry, filename)
        if found is not None:
            log.info("%s file found at the provider as %s (uploaded before a crash)", split, found)
            file_id = found
            break
        try:
            file_id = provider.create_file(path, filename)
            break
        except Exception as exc:  # noqa: BLE001 - transient errors retry after checking for the upload
            retry_it, retry_after = transient(exc)
            if not retry_it:
                raise api_error(exc, f"the upload of {path.name}") from exc
            if attempt >= retry.retries:
                raise
            retry.wait(attempt, retry_after)
            attempt += 1
    state.record_file(sha256, {"id": file_id, "split": split, "filename": filename, "bytes": size})
    log.info("uploaded %s (%d bytes) as %s", path.name, size, file_id)
    return wait_processed(provider, retry, file_id)


def wait_processed(provider: Provider, retry: Retry, file_id: str) -> str:
    for interval in retry.polls():
        f = provider.file_status(retry, file_id)
        if f.status == "processed":
            return file_id
        if f.status == "error":
            raise UserError(f"The provider could not process file {file_id}: {f.details or 'no details given'}.")
        time.sleep(interval)
    raise AssertionError("unreachable")
