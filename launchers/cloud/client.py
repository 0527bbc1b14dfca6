"""SDK client construction from config and the environment, and retries with backoff.

Credentials come from the config (normally left null) or the SDK's own environment variables; they are handed to
the SDK and never logged or written. The SDK's built-in retries are off (``max_retries=0``): :func:`call` retries
429 (honouring Retry-After), 408/409 and 5xx answers and dropped connections itself, with exponential backoff, so
that non-idempotent calls (upload, job creation) can check for a server-side side effect before trying again.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from trainer.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_STATUS = (408, 409, 429)
MAX_RETRY_AFTER_S = 300.0


def make_client(hw: Any) -> Any:
    """openai.OpenAI or openai.AzureOpenAI for ``hardware``; a UserError naming the variable when one is missing."""
    import openai

    if hw.provider == "openai":
        if not (hw.api_key or os.environ.get("OPENAI_API_KEY")):
            raise UserError(
                "No OpenAI API key: set the environment variable OPENAI_API_KEY (hydratune never stores "
                "keys; hardware.api_key=${oc.env:MY_VAR} also works)."
            )
        kwargs = {"base_url": hw.base_url} if hw.base_url else {}
        return openai.OpenAI(
            api_key=hw.api_key or None, organization=hw.organization, project=hw.project, max_retries=0, **kwargs
        )
    if hw.provider == "azure_openai":
        if not (hw.api_key or os.environ.get("AZURE_OPENAI_API_KEY") or os.environ.get("AZURE_OPENAI_AD_TOKEN")):
            raise UserError(
                "No Azure OpenAI credentials: set the environment variable AZURE_OPENAI_API_KEY (or "
                "AZURE_OPENAI_AD_TOKEN for an Entra ID token)."
            )
        endpoint = hw.base_url or os.environ.get("AZURE_OPENAI_ENDPOINT")
        if not endpoint:
            raise UserError(
                "No Azure OpenAI endpoint: set AZURE_OPENAI_ENDPOINT (e.g. "
                "https://RESOURCE.openai.azure.com) or hardware.base_url."
            )
        version = hw.api_version or os.environ.get("OPENAI_API_VERSION")
        if not version:
            raise UserError(
                "No Azure OpenAI API version: set OPENAI_API_VERSION (e.g. 2025-04-01-preview) or hardware.api_version."
            )
        return openai.AzureOpenAI(
            api_key=hw.api_key or None,
            azure_endpoint=endpoint,
            api_version=version,
            organization=hw.organization,
            project=hw.project,
            max_retries=0,
        )
    raise UserError(f"hardware.provider={hw.provider} is not supported. Allowed: openai, azure_openai.")


def retry_delay(attempt: int, base_s: float, retry_after: str | None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): Retry-After when given, else backoff + jitter."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER_S)
        except ValueError:
            pass
    return min(base_s * 2**attempt, 60.0) * (0.75 + 0.25 * random.random())


def transient(exc: BaseException) -> tuple[bool, str | None]:
    """(should retry, Retry-After header) for an SDK exception."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        headers = exc.response.headers
        retry_after = headers.get("retry-after")
        if headers.get("retry-after-ms") is not None:
            retry_after = str(float(headers["retry-after-ms"]) / 1000)
        return status in RETRY_STATUS or status >= 500, retry_after
    return False, None


def call(fn: Callable[..., T], *args: Any, retries: int, backoff_s: float, what: str = "", **kwargs: Any) -> T:
    """Call an SDK method, retrying transient failures; the last error propagates."""
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            retry, retry_after = transient(exc)
            if not retry or attempt == retries:
                raise
            delay = retry_delay(attempt, backoff_s, retry_after)
            log.warning(
                "%s: %s; retrying in %.1f s (%d/%d)",
                what or getattr(fn, "__name__", "request"),
                describe(exc),
                delay,
                attempt + 1,
                retries,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def describe(exc: BaseException) -> str:
    """A short, secret-free description of an SDK error (status and the provider's message)."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = (body.get("error") or body).get("message") if isinstance(body.get("error") or body, dict) else None
        return f"HTTP {exc.status_code} {message or exc.message}"
    return type(exc).__name__


def api_error(exc: BaseException, doing: str) -> UserError:
    """The provider's refusal as a one-paragraph UserError."""
    return UserError(f"The provider refused {doing}: {describe(exc)}.")


@contextmanager
def user_errors(run_dir: object, retries: int) -> Iterator[None]:
    """Provider errors that are left after the retries become one paragraph, not a traceback."""
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        if exc.status_code >= 500 or exc.status_code in RETRY_STATUS:
            raise _kept_failing(exc, run_dir, retries) from None
        raise api_error(exc, "the request") from None
    except openai.APIError as exc:
        raise _kept_failing(exc, run_dir, retries) from None


def _kept_failing(exc: BaseException, run_dir: object, retries: int) -> UserError:
    return UserError(
        f"The provider kept failing ({describe(exc)}) after hardware.max_retries={retries} retries. Run the same "
        f"command again to resume: {run_dir} remembers the uploads and the job, so nothing is uploaded or paid twice."
    )
