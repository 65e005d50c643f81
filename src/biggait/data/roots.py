"""Where a dataset's shards live: a local directory, or a URL that webdataset's `gopen` opens (docs/1_data.md).

A root names the directory that holds `train/` and `test/`. Every file under it is found by its relative path
(`train/manifest.json`, `train/<shard>.tar`): appended to a local path or a URL after a `/`, or put where the
root has `{}`: `pipe:cat /data/ccpg/{}`, `pipe:aws s3 cp s3://bucket/ccpg/{} -`, `https://host/ccpg/{}?sig=...`.
"""

from __future__ import annotations

import re
import shlex
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from webdataset.gopen import gopen, gopen_schemes

from biggait.data.shards import MANIFEST, parse_manifest, read_manifest
from biggait.errors import ConfigError, DatasetNotFoundError

__all__ = ["DataRoot", "describe_exit", "read_manifest_at", "serve_directory"]

PLACEHOLDER = "{}"
# What gopen opens besides local files (its `gopen_schemes`, e.g. http via curl, gs via gsutil, hf via curl).
_SCHEMES = sorted(k for k in gopen_schemes if not k.startswith("_"))
_S3_HINT = "data.root='pipe:aws s3 cp s3://BUCKET/PATH/{} -' (or any command that writes the file to stdout)"
# curl's exit statuses that name a cause (curl(1), "EXIT CODES").
_CURL_EXITS = {
    6: "the host name does not resolve",
    7: "nothing answers at that address (connection refused)",
    22: "the server answered with an HTTP error (404 not found, 403 forbidden, ...)",
    28: "the connection timed out",
    35: "the TLS handshake failed",
}


@dataclass(frozen=True)
class DataRoot:
    """A dataset root: a local directory or a gopen URL (`http(s)://`, `pipe:`, `gs://`, `hf://`, ...)."""

    spec: str
    scheme: str  # "" for a local directory

    @classmethod
    def parse(cls, spec: Any) -> DataRoot:
        """Check `data.root`; an unknown scheme or a `pipe:` command without `{}` is one ConfigError line."""
        spec = str(spec).strip()
        if not spec:
            raise ConfigError("data.root is empty: give a dataset directory or a URL (docs/1_data.md)")
        match = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", spec)
        scheme = match.group(1).lower() if match else ""
        if scheme == "file":
            return cls(urllib.parse.unquote(urllib.parse.urlparse(spec).path), "")
        if scheme == "s3":
            raise ConfigError(f"data.root={spec}: webdataset reads S3 through a command; use {_S3_HINT}")
        if scheme and scheme not in _SCHEMES:
            raise ConfigError(
                f"data.root={spec}: unknown scheme {scheme}:; use a local directory or one of "
                f"{', '.join(s + ':' for s in _SCHEMES)} (docs/1_data.md; a local path with a colon: ./{spec})"
            )
        if scheme == "pipe" and PLACEHOLDER not in spec:
            raise ConfigError(
                f"data.root={spec}: a pipe: root needs {PLACEHOLDER} where the file's path goes, e.g. "
                f"'pipe:cat /data/ccpg/{PLACEHOLDER}' or {_S3_HINT}"
            )
        return cls(spec, scheme)

    @property
    def is_local(self) -> bool:
        return self.scheme == ""

    @property
    def name(self) -> str:
        """The last folder name of the root (the default dataset name): `ccpg` for `https://host/ccpg/`."""
        if self.is_local:
            return Path(self.spec).name
        head = self.spec.split(PLACEHOLDER)[0].split("?")[0]
        parts = [p for p in re.split(r"[/\s]", head) if p]
        return parts[-1] if parts else self.spec

    def locate(self, relative: str) -> str:
        """The path or URL of `relative` (e.g. `train/manifest.json`), quoted for a URL or a shell command."""
        if self.is_local:
            return str(Path(self.spec) / relative)
        quoted = shlex.quote(relative) if self.scheme == "pipe" else urllib.parse.quote(relative)
        if PLACEHOLDER in self.spec:
            return self.spec.replace(PLACEHOLDER, quoted)
        return self.spec.rstrip("/") + "/" + quoted

    def read(self, relative: str, *, fix: str) -> bytes:
        """The whole file at `relative` through gopen; one `DatasetNotFoundError` line naming the URL, the cause
        and `fix` when it cannot be read."""
        url = self.locate(relative)
        stream = None
        try:
            stream = gopen(url, "rb")
            data = stream.read()
            stream.close()  # a command (curl, gsutil, pipe:) reports its failure when it is waited for
            return data
        except FileNotFoundError as exc:  # the program gopen runs (curl, gsutil, ...) is not installed
            program = exc.filename or str(exc)
            raise DatasetNotFoundError(
                f"cannot read {url}: the program {program!r} that webdataset runs for {self.scheme}: URLs is "
                f"not installed; install it (e.g. `apt-get install curl`) or copy the data to a local directory"
            ) from exc
        except (OSError, ValueError) as exc:
            cause = describe_exit(stream, self.scheme) or f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            raise DatasetNotFoundError(f"cannot read {url}: {cause}; {fix}") from exc


def describe_exit(stream: Any, scheme: str) -> str:
    """Why the command behind a gopen stream failed, from its exit status ('' when it did not fail)."""
    status = getattr(stream, "status", None)
    if status is None or status in (0, 141):  # 141: killed by SIGPIPE after the reader stopped
        return ""
    if scheme in ("http", "https", "hf", "htgs", "sftp", "ftps", "scp"):
        return f"curl exit status {status}: {_CURL_EXITS.get(status, 'see curl(1), EXIT CODES')}"
    if status == 127:
        return "the command was not found (exit status 127)"
    return f"the command exited with status {status}"


def read_manifest_at(root: DataRoot, split: str, *, dataset: str) -> dict[str, Any]:
    """The checked manifest of `<root>/<split>`: `read_manifest` for a local root (which also checks the
    shard files and their sidecars), else fetched through gopen and checked field by field."""
    if root.is_local:
        return read_manifest(Path(root.spec) / split, dataset=dataset)
    url = root.locate(f"{split}/{MANIFEST}")
    fix = (
        f"check data.root={root.spec}: it must serve {split}/{MANIFEST} and the shards it lists, as written by "
        f"`make data DATASET={dataset}` (publish that directory, e.g. `python -m http.server` inside it; "
        "docs/1_data.md)"
    )
    return parse_manifest(root.read(f"{split}/{MANIFEST}", fix=fix), where=url, fix=fix)


@contextmanager
def serve_directory(directory: str | Path, *, host: str = "127.0.0.1") -> Iterator[str]:
    """A static HTTP server over `directory` on a free port of `host` (what `python -m http.server` does),
    for tests and benchmarks; yields its base URL and stops it on exit."""
    handler = partial(_QuietHandler, directory=str(directory))
    server = _QuietServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A reader that stops in the middle of a shard (the end of an epoch) closes its connection: normal."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no line per request on stderr
        pass
