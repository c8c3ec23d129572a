"""Stores behind fsspec URLs (``s3://``, ``gs://``, ``file://``, ...): their file system, their failures in one line.

fsspec's backend for the URL's protocol does the talking (s3fs for ``s3://``); glimpse passes no settings of its own,
so an S3 endpoint and credentials come from botocore's standard environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_MAX_ATTEMPTS``, ...) or from
``storage_options`` given to :func:`glimpse.store.open_store`. What a backend raises when it cannot serve (its package
not installed, its endpoint unreachable, credentials missing or refused) becomes a :class:`RemoteStoreError` naming
the URL and the cause, which every command line prints as one line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from glimpse.store.schema import StoreError

#: Class names (anywhere in an exception's bases or causes) of a backend that could not reach its server: botocore's,
#: aiohttp's, and the builtin ones.
UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
               "ClientConnectorError", "ServerTimeoutError", "ConnectionError", "TimeoutError")
#: Class names of a backend that found no credentials to sign with (botocore's, google-auth's, azure's).
NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                  "DefaultCredentialsError", "ClientAuthenticationError")

#: Loggers of the backends whose INFO lines ("Found credentials in environment variables") would break a command's
#: one-line error where the command logs at INFO (train): they show WARNING and above unless configured otherwise.
BACKEND_LOGGERS = ("botocore", "aiobotocore", "s3fs")
for _name in BACKEND_LOGGERS:
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)


class RemoteStoreError(StoreError):
    """A store or root behind a URL that its fsspec backend cannot serve: backend not installed, endpoint
    unreachable, credentials missing or refused."""


def is_url(location: str | Path) -> bool:
    """Whether ``location`` is an fsspec URL (``s3://...``, ``file:///...``) rather than a local path."""
    return "://" in str(location)


def join(location: str, *parts: str) -> str:
    """``location`` and ``parts`` joined with ``/``, a URL kept a URL (pathlib would turn ``s3://`` into ``s3:/``)."""
    return "/".join([str(location).rstrip("/"), *parts])


def check_backend(location: str) -> None:
    """Raise a RemoteStoreError naming the package to install when the URL's protocol has no usable fsspec backend."""
    from fsspec.registry import get_filesystem_class, known_implementations

    protocol = location.split("://", 1)[0]
    try:
        get_filesystem_class(protocol)
    except ImportError:
        spec = known_implementations.get(protocol, {})
        package = str(spec.get("class", "")).split(".")[0]
        need = f"the package {package} (pip install {package})" if package not in ("", "fsspec") else spec.get("err")
        raise RemoteStoreError(f"{location}: reading {protocol}:// needs {need}") from None
    except ValueError:
        raise RemoteStoreError(f"{location}: no fsspec backend knows the protocol {protocol}://") from None


def url_fs(location: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec file system, path inside it) of a URL; a RemoteStoreError when its backend is not installed."""
    from fsspec.core import url_to_fs

    check_backend(location)
    with remote_errors(location):
        return url_to_fs(location, **(storage_options or {}))


@contextmanager
def remote_errors(location: str) -> Iterator[None]:
    """Re-raise what a backend raises about ``location`` as a one-line RemoteStoreError when it is an unreachable
    endpoint or missing or refused credentials (anything else goes on as it was)."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        message = remote_failure(location, exc)
        if message is None:
            raise
        raise RemoteStoreError(message) from exc


def remote_failure(location: str, exc: BaseException) -> str | None:
    """The one-line message of a backend's failure to reach or sign for ``location``; None for any other error."""
    protocol = location.split("://", 1)[0]
    chain = _chain(exc)
    names = {cls.__name__ for err in chain for cls in type(err).__mro__}
    detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if names & set(NO_CREDENTIALS):
        how = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or storage_options anon=True for a "
               "public bucket" if protocol in ("s3", "s3a") else "set the credentials its fsspec backend reads")
        return f"{location}: no credentials for {protocol}:// ({detail}); {how}"
    if names & set(UNREACHABLE):
        return f"{location}: cannot reach the endpoint {_endpoint(chain)} ({detail}); check the address " \
               f"(AWS_ENDPOINT_URL for an S3-compatible server) and the network"
    if any(isinstance(err, PermissionError) for err in chain):
        return f"{location}: the server refused access ({detail}); check the credentials and the bucket's permissions"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during, outermost first."""
    seen: list[BaseException] = []
    err: BaseException | None = exc
    while err is not None and all(err is not s for s in seen):
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _endpoint(chain: list[BaseException]) -> str:
    """scheme://host:port of the URL a backend's connection error names (botocore's ``endpoint_url``)."""
    for err in chain:
        kwargs = getattr(err, "kwargs", None)
        if isinstance(kwargs, dict) and kwargs.get("endpoint_url"):
            parts = urlsplit(str(kwargs["endpoint_url"]))
            return f"{parts.scheme}://{parts.netloc}"
    return os.environ.get("AWS_ENDPOINT_URL") or "(the backend's default endpoint)"
