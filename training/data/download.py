"""Fetch a MovieLens archive from GroupLens, verify its checksum and unpack it.

Kept apart from the parsers so the loaders stay usable (and testable) on machines with no network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Literal

from core.errors import ConfigError, DownloadError

MovieLensName = Literal["ml-100k", "ml-latest-small"]

URLS: dict[str, str] = {
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-latest-small": "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
}
# MD5, because that is what GroupLens publishes (a `.md5` file beside each zip). The ml-100k value is
# GroupLens' published md5 of the frozen 1998 archive. ml-latest-small is re-issued from time to time, so
# nothing is pinned for it (None): the md5 is read from the published `<url>.md5` at download time.
MD5SUMS: dict[str, str | None] = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-latest-small": None,
}
TIMEOUT_S = 30
_MARKER = {"ml-100k": "u.data", "ml-latest-small": "ratings.csv"}  # proves an unpacked copy is complete
_CHUNK = 1 << 20
_MD5 = re.compile(r"\b[0-9a-fA-F]{32}\b")


def download_movielens(name: MovieLensName, dest: Path) -> Path:
    """Download and unpack `name` under `dest`; returns `dest/name`, reusing a complete earlier copy."""
    if name not in URLS:
        raise ConfigError(f"unknown MovieLens data set {name!r}: choose one of {', '.join(URLS)}")
    dest = Path(dest)
    target = dest / name
    marker = _MARKER[name]
    if (target / marker).is_file():
        return target
    if target.exists():
        raise DownloadError(f"{target} exists but has no {marker}: remove it and download again")
    url = URLS[name]
    dest.mkdir(parents=True, exist_ok=True)
    # Download and unpack inside dest, then rename: an interrupted run never leaves a half copy at target.
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".{name}-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        actual = _fetch(url, archive, name)
        expected = MD5SUMS.get(name) or _published_md5(url, name)
        if actual.lower() != expected.lower():
            raise DownloadError(f"checksum mismatch for {url}: md5 is {actual}, expected {expected}")
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)  # extractall drops absolute paths and `..` components
        except zipfile.BadZipFile as err:
            raise DownloadError(f"{url} is not a valid zip archive: {err}") from err
        if not (unpacked / name / marker).is_file():
            raise DownloadError(f"archive from {url} has no {name}/{marker}")
        os.replace(unpacked / name, target)
    return target


def _fetch(url: str, out: Path, name: str) -> str:
    """Stream `url` to `out`; returns the md5 hex digest of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, out.open("wb") as fh:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                fh.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise DownloadError(
            f"could not download {name} from {url}: {_reason(err)} (offline? pass --source PATH instead)"
        ) from err
    return digest.hexdigest()


def _published_md5(url: str, name: str) -> str:
    """The md5 GroupLens publishes beside the archive (`<url>.md5`)."""
    md5_url = f"{url}.md5"
    try:
        with urllib.request.urlopen(md5_url, timeout=TIMEOUT_S) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise DownloadError(
            f"could not download the checksum of {name} from {md5_url}: {_reason(err)} "
            "(offline? pass --source PATH instead)"
        ) from err
    match = _MD5.search(text)
    if match is None:
        raise DownloadError(f"{md5_url} holds no md5 checksum")
    return match.group(0)


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__
