"""Azure deployments of the fine-tuned model through the management REST API.

PUT/GET/DELETE {management_url}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/
accounts/{resource}/deployments/{name}?api-version=..., with a bearer token from the environment
(AZURE_MANAGEMENT_TOKEN, e.g. ``az account get-access-token --query accessToken -o tsv``). The token is sent in a
header only; it is never logged or written.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from launchers.cloud.client import RETRY_STATUS, retry_delay
from trainer.config.errors import UserError

log = logging.getLogger(__name__)


class Deployments:
    def __init__(self, dep: Any, retries: int, backoff_s: float, poll_s: float) -> None:
        missing = [k for k in ("subscription_id", "resource_group", "resource_name") if not dep[k]]
        if missing:
            raise UserError(
                f"hardware.deployment.create=true needs {', '.join('hardware.deployment.' + k for k in missing)} "
                "(the Azure OpenAI resource that will host the fine-tuned model)."
            )
        if not dep.token:
            raise UserError(
                "No Azure management token: set the environment variable AZURE_MANAGEMENT_TOKEN (for "
                "example from `az account get-access-token --query accessToken -o tsv`)."
            )
        self.dep, self.retries, self.backoff_s, self.poll_s = dep, retries, backoff_s, poll_s
        self._token = str(dep.token)

    def url(self, name: str) -> str:
        d = self.dep
        return (
            f"{d.management_url.rstrip('/')}/subscriptions/{d.subscription_id}/resourceGroups/{d.resource_group}"
            f"/providers/Microsoft.CognitiveServices/accounts/{d.resource_name}/deployments/{name}"
            f"?api-version={d.api_version}"
        )

    def request(self, method: str, name: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(
                self.url(name),
                data=data,
                method=method,
                headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    raw = resp.read()
                    return resp.status, json.loads(raw) if raw else {}
            except urllib.error.HTTPError as exc:
                retry_after, raw = exc.headers.get("Retry-After"), exc.read()
                if exc.code == 404 and method != "PUT":
                    return 404, {}
                if (exc.code in RETRY_STATUS or exc.code >= 500) and attempt < self.retries:
                    time.sleep(retry_delay(attempt, self.backoff_s, retry_after))
                    continue
                raise UserError(
                    f"The Azure management API refused {method} deployment '{name}': HTTP {exc.code} {_message(raw)}."
                ) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt < self.retries:
                    time.sleep(retry_delay(attempt, self.backoff_s, None))
                    continue
                raise UserError(f"Cannot reach the Azure management API at {self.dep.management_url}: {exc}.") from None
        raise AssertionError("unreachable")

    def create(self, name: str, model: str) -> None:
        body = {
            "sku": {"name": self.dep.sku, "capacity": int(self.dep.capacity)},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}},
        }
        self.request("PUT", name, body)
        log.info("creating Azure deployment %s of %s", name, model)

    def wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + float(self.dep.timeout_s)
        interval = self.poll_s
        while True:
            status, body = self.request("GET", name)
            state = (body.get("properties") or {}).get("provisioningState") if status != 404 else "NotFound"
            if state == "Succeeded":
                log.info("deployment %s is ready", name)
                return
            if state in ("Failed", "Canceled", "NotFound"):
                raise UserError(f"Azure deployment '{name}' ended in state {state}; see the Azure portal.")
            if time.monotonic() > deadline:
                raise UserError(
                    f"Azure deployment '{name}' was not ready within hardware.deployment.timeout_s="
                    f"{self.dep.timeout_s} s (state {state})."
                )
            time.sleep(interval)
            interval = min(interval * 1.5, 60.0)

    def delete(self, name: str) -> None:
        self.request("DELETE", name)
        log.info("deleted Azure deployment %s", name)


def _message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        return str((body.get("error") or {}).get("message") or body)
    except (ValueError, AttributeError):
        return raw[:200].decode(errors="replace")


def deployment_name(cfg: Any, run_id: str) -> str:
    """The configured name, or one made from the run name and run id (Azure allows letters, digits, - _ .)."""
    if cfg.hardware.deployment.name:
        return str(cfg.hardware.deployment.name)
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(cfg.run_name))
    return f"{base[:40]}-{run_id}"


@contextmanager
def deployed(cfg: Any, state: Any, model: str | None) -> Iterator[str | None]:
    """Yield the deployment name to evaluate the fine-tuned model through (None when there is none).

    With deployment.create, the deployment is created (PUT is idempotent, so a rerun reuses it), awaited, and
    deleted afterwards when deployment.delete_after is set, even when evaluation fails.
    """
    hw = cfg.hardware
    dep = hw.deployment
    if not dep.create:
        if not dep.name:
            log.warning(
                "Azure: no deployment of %s (hardware.deployment.create=false), so the fine-tuned model is "
                "not evaluated. Set hardware.deployment.create=true or hardware.deployment.name=EXISTING.",
                model,
            )
        yield str(dep.name) if dep.name else None
        return
    if model is None:  # the job reported no fine-tuned model: there is nothing to deploy
        log.warning("Azure: the job named no fine-tuned model, so no deployment is created and it is not evaluated.")
        yield None
        return
    api = Deployments(dep, hw.max_retries, hw.retry_backoff_s, hw.poll_interval_s)
    name = deployment_name(cfg, state.run_id)
    state.record("deployment", {"name": name, "model": model, "status": "creating"})
    api.create(name, model)
    try:
        api.wait_ready(name)
        state.record("deployment", {"name": name, "model": model, "status": "ready"})
        yield name
    finally:
        if dep.delete_after:
            api.delete(name)
            state.record("deployment", {"name": name, "model": model, "status": "deleted"})
