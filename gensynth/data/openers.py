"""Open shard and card URLs as binary streams: local paths, file:, http(s) (urllib, no curl),
s3:// and gs:// (fsspec: s3fs / gcsfs) and pipe:COMMAND.

Credentials are never read from gensynth's own files: s3fs and gcsfs find them in the usual
environment variables and config files. The S3 endpoint of an S3-compatible store comes from
``FSSPEC_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.
"""
from __future__ import annotations

import http.client
import os
import posixpath
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from gensynth.errors import DataError
from gensynth.trust import COMMAND_PREFIXES, refusal

REMOTE_SCHEMES = ("http://", "https://", "s3://", "gs://", "gcs://")


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


def is_pipe(url: str) -> bool:
    return url.strip().startswith(COMMAND_PREFIXES)


def local_path(url: str) -> Path | None:
    """The filesystem path of a local URL (plain path or file:), else None."""
    if url.startswith("file://"):
        return Path(urllib.parse.urlparse(url).path)
    if url.startswith("file:"):
        return Path(url[5:])
    if is_remote(url) or is_pipe(url):
        return None
    return Path(url).expanduser()


def s3_storage_options() -> dict:
    """s3fs options from the environment (endpoint only; credentials are found by botocore)."""
    endpoint = (os.environ.get("FSSPEC_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def _fsspec_fs(url: str):
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        if scheme == "s3":
            return fsspec.filesystem("s3", **s3_storage_options())
        return fsspec.filesystem("gcs" if scheme in ("gs", "gcs") else scheme)
    except ImportError as exc:
        extra = "s3" if scheme == "s3" else "gcs"
        raise DataError(f"reading {url} needs the {'s3fs' if scheme == 's3' else 'gcsfs'} package: "
                        f"pip install 'gensynth[{extra}]' ({exc})") from None


class _PipeStream:
    """stdout of a shell command as a readable binary stream; checks the exit status on close."""

    def __init__(self, url: str):
        self.cmd = url[5:]
        self.proc = subprocess.Popen(self.cmd, shell=True, stdout=subprocess.PIPE)  # noqa: S602 (user's own URL)
        self.raw = self.proc.stdout

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)

    def close(self) -> None:
        self.raw.close()
        status = self.proc.wait()
        if status not in (0, -13, 141):  # 141/-13: SIGPIPE after an early stop
            raise DataError(f"pipe: command {self.cmd!r} exited with status {status}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# transient failures of remote reads: retried with exponential backoff before the run fails
READ_ATTEMPTS = max(1, int(os.environ.get("GENSYNTH_READ_ATTEMPTS", "5")))
FIRST_BACKOFF_S = float(os.environ.get("GENSYNTH_READ_BACKOFF", "0.5"))
_TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)


def _backoff(attempt: int) -> None:
    time.sleep(min(FIRST_BACKOFF_S * 2 ** attempt, 8.0))


def _http_error(url: str, exc: BaseException, attempts: int) -> DataError:
    if isinstance(exc, urllib.error.HTTPError):
        why = f"HTTP {exc.code} {exc.reason}"
    else:
        why = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    return DataError(f"cannot read {url}: {why}{tries}")


class _HTTPStream:
    """An http(s) body as a readable stream that survives transient failures: failed requests (timeouts, resets,
    HTTP 408/429/5xx) are retried with backoff, and a connection lost mid-body is resumed with a Range request
    from the byte reached, at most READ_ATTEMPTS times per read."""

    def __init__(self, url: str):
        self.url = url
        self.pos = 0
        self.resp = self._open()

    def _open(self):
        last: BaseException | None = None
        for attempt in range(READ_ATTEMPTS):
            if attempt:
                _backoff(attempt - 1)
            headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
            try:
                resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers),  # noqa: S310
                                              timeout=60)
            except urllib.error.HTTPError as exc:
                if exc.code not in _TRANSIENT_HTTP:
                    raise _http_error(self.url, exc, 1) from None
                last = exc
                continue
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                last = exc
                continue
            if self.pos and resp.status != 206:  # the server ignored the range: skip what was read already
                skip = self.pos
                while skip:
                    chunk = resp.read(min(skip, 1 << 20))
                    if not chunk:
                        break
                    skip -= len(chunk)
            return resp
        raise _http_error(self.url, last, READ_ATTEMPTS)

    def read(self, n: int = -1) -> bytes:
        for attempt in range(READ_ATTEMPTS):
            try:
                data = self.resp.read(n) if n is not None and n >= 0 else self.resp.read()
                remaining = getattr(self.resp, "length", None)
                if data or n == 0 or not remaining:
                    self.pos += len(data)
                    return data
                failure: BaseException = http.client.IncompleteRead(b"", remaining)  # closed early
            except (OSError, http.client.HTTPException) as exc:
                failure = exc
            self.resp.close()
            if attempt == READ_ATTEMPTS - 1:
                raise _http_error(self.url, failure, READ_ATTEMPTS)
            _backoff(attempt)
            self.resp = self._open()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.resp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_url(url: str, *, allow_pipe: bool = False) -> IO[bytes]:
    """Open ``url`` for binary reading; DataError naming the URL when it does not exist or fails.

    ``pipe:COMMAND`` runs COMMAND only with ``allow_pipe`` (the user's own data.root with data.allow_pipe=true);
    otherwise it is refused: URLs from cards, checkpoints and other files never start a process."""
    if is_pipe(url) and not allow_pipe:
        raise DataError(refusal(url))
    path = local_path(url)
    if path is not None:
        try:
            return open(path, "rb")
        except OSError as exc:
            raise DataError(f"cannot open {path}: {exc.strerror or exc}") from None
    if is_pipe(url):
        return _PipeStream(url.strip())  # type: ignore[return-value]
    if url.startswith(("http://", "https://")):
        return _HTTPStream(url)  # type: ignore[return-value]
    fs = _fsspec_fs(url)
    last: BaseException | None = None
    for attempt in range(READ_ATTEMPTS):  # s3fs / gcsfs retry inside a read; opening is retried here
        if attempt:
            _backoff(attempt - 1)
        try:
            return fs.open(url, "rb")
        except FileNotFoundError:
            raise DataError(f"cannot read {url}: no such object") from None
        except PermissionError as exc:
            raise DataError(f"cannot read {url}: {exc}") from None
        except Exception as exc:  # botocore / gcsfs errors: connection problems, throttling, 5xx
            last = exc
    raise DataError(f"cannot read {url}: {' '.join(str(last).split())} (after {READ_ATTEMPTS} attempts)")


def read_bytes(url: str) -> bytes:
    with open_url(url) as f:
        return f.read()


def exists(url: str) -> bool:
    path = local_path(url)
    if path is not None:
        return path.exists()
    if is_pipe(url):
        return False
    if url.startswith(("http://", "https://")):
        last: BaseException | None = None
        for attempt in range(READ_ATTEMPTS):
            if attempt:
                _backoff(attempt - 1)
            try:
                with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30):  # noqa: S310
                    return True
            except urllib.error.HTTPError as exc:
                if exc.code not in _TRANSIENT_HTTP:
                    return False  # 404, 403 ...: not there for us
                last = exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                last = exc
        raise _http_error(url, last, READ_ATTEMPTS)
    try:
        return _fsspec_fs(url).exists(url)
    except DataError:
        raise
    except Exception as exc:
        if unreachable(exc):
            raise DataError(f"cannot reach the storage of {url}: {exc}. Check the network and the endpoint "
                            f"(FSSPEC_S3_ENDPOINT_URL / AWS_ENDPOINT_URL for S3-compatible stores, "
                            f"STORAGE_EMULATOR_HOST for a GCS emulator)") from None
        return False


_CONNECT_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ServerDisconnectedError",
                   "ConnectionClosedError", "ProxyConnectionError"}


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says that a host could not be reached, as opposed to
    a file that is not there."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in _CONNECT_ERRORS:
            return True
        if isinstance(exc, OSError) and exc.errno is None and "connect" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def join(base: str, name: str) -> str:
    """``base`` (a directory-like URL or path) joined with a file name."""
    if local_path(base) is not None and not base.startswith("file:"):
        return str(Path(base).expanduser() / name)
    return base.rstrip("/") + "/" + name


def dirname(url: str) -> str:
    if local_path(url) is not None and not url.startswith("file:"):
        return str(Path(url).expanduser().parent)
    return posixpath.dirname(url)


def list_dir(url: str, pattern: str) -> list[str]:
    """Files matching a glob ``pattern`` in a local directory or an s3/gs prefix (sorted); [] for http."""
    path = local_path(url)
    if path is not None:
        return sorted(str(p) for p in path.glob(pattern))
    if url.startswith(("s3://", "gs://", "gcs://")):
        fs = _fsspec_fs(url)
        scheme = url.split("://", 1)[0]
        try:
            found = fs.glob(url.rstrip("/") + "/" + pattern)
        except Exception as exc:
            what = "cannot reach the storage to list" if unreachable(exc) else "cannot list"
            raise DataError(f"{what} {url}: {exc}") from None
        return sorted(f"{scheme}://{p}" if "://" not in p else p for p in found)
    return []
