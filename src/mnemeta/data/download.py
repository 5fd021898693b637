"""Download a file with a checksum, and extract a zip without trusting its member names.

Both functions are all-or-nothing: a failed download or a refused archive leaves nothing behind
at the destination (no temporary file, no half-extracted folder), so a retry starts clean and a
later run never mistakes a partial file for a complete one.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import re
import secrets
import shutil
import stat
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from mnemeta.errors import ConfigError, DataError
from mnemeta.io import atomic_write_bytes

__all__ = ["download_file", "safe_extract_zip"]

_CHUNK = 1 << 20  # 1 MiB: large enough that the per-read overhead is nothing, small enough for RAM.


def _sibling_temp(dest: Path, suffix: str) -> Path:
    """A fresh hidden name next to ``dest``: same filesystem, so ``os.replace`` is atomic."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(6)}{suffix}")


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Stream ``url`` to ``dest``, verify its checksum(s), and only then move it into place.

    The bytes go to a temporary file in ``dest``'s folder and are hashed on the fly; ``dest``
    appears (atomically, via :func:`mnemeta.io.atomic_write_bytes`) only if every given checksum
    matches. On any failure of the download the temporary file is deleted and a
    :class:`DataError` names the URL and the fix; a URL that is not http(s) is a
    :class:`ConfigError`.

    Args:
        url: an ``http://`` or ``https://`` URL (redirects are followed).
        dest: the file to create or replace; its folder is created if needed.
        sha256: expected hex SHA-256 of the file, or None to skip this check.
        md5: expected hex MD5 of the file, or None to skip this check.
        progress: show a tqdm progress bar on stderr.
        timeout: seconds to wait for the server on each socket operation.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ConfigError(f"cannot download {url!r}: only http(s) URLs are supported; fix the URL")
    started = False  # whether atomic_write_bytes got as far as calling fetch (the temp file exists)

    def fetch(out: BinaryIO) -> None:
        nonlocal started
        started = True
        h_sha256, h_md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        total: int | None = None  # from Content-Length, when the server sends it
        received = 0
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                bar = progress_bar(total, f"downloading {dest.name}", "B", progress)
                try:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        h_sha256.update(chunk)
                        h_md5.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                finally:
                    bar.close()
        except (OSError, http.client.HTTPException) as exc:  # URLError/HTTPError are OSErrors
            raise DataError(
                f"could not download {url} ({exc}); check the URL and the network "
                f"connection, or fetch the file by hand and put it at {dest}"
            ) from exc
        # Without a checksum this is the only guard against a connection that closed early.
        if total is not None and received != total:
            raise DataError(
                f"download of {url} stopped after {received} of {total} bytes; retry it"
            )
        for name, expected, h in (("sha256", sha256, h_sha256), ("md5", md5, h_md5)):
            if expected is None:
                continue
            got = h.hexdigest()
            if not hmac.compare_digest(got, expected.strip().lower()):
                raise DataError(
                    f"{name} mismatch for {url}: got {got}, expected {expected}; the download "
                    "is damaged or the file changed upstream (nothing was kept): retry, or pass "
                    "the new checksum if you trust the new file"
                )

    # atomic_write_bytes streams into a temp file beside dest (with the umask's permissions, not
    # mkstemp's 0600, which would surprise whoever shares the data folder) and renames it into
    # place only if fetch returns: any error above, or a Ctrl-C, removes the temp file.
    try:
        atomic_write_bytes(dest, fetch)
    except OSError as exc:
        if started:  # an error while writing the download (a full disk): not about the folder
            raise
        raise DataError(
            f"cannot write beside {dest} ({exc}); make {dest.parent} writable or choose another "
            "destination"
        ) from exc
    return dest


class _NoBar:
    """The silent stand-in for a tqdm bar: the two methods we call, doing nothing."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool) -> _NoBar:
    """A tqdm bar on stderr if ``enabled``, else a silent stand-in (``update``/``close`` only)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm  # imported lazily: only progress bars need it

    bytes_ = unit == "B"  # byte counts read better as KiB/MiB
    bar: _NoBar = tqdm(
        total=total, desc=desc, unit=unit, unit_scale=bytes_, unit_divisor=1024 if bytes_ else 1000
    )
    return bar


# A drive letter ("C:evil", "C:/evil") makes a path absolute or drive-relative on Windows.
_DRIVE = re.compile(r"^[A-Za-z]:")


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting ``info`` could write outside the destination, or None if it cannot."""
    name = info.filename
    if "\0" in name:
        return "NUL byte in the name"
    if name.startswith(("/", "\\")):
        return "absolute path"
    if _DRIVE.match(name):
        return "drive letter"
    # Check both separators: a zip made on Windows may use "\" and Windows would honour it.
    if ".." in re.split(r"[\\/]", name):
        return "'..' component"
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # 3 = Unix: the high 16 bits are st_mode
        if stat.S_ISLNK(mode):
            return "symbolic link"
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return "special file (device, fifo or socket)"
    return None


def safe_extract_zip(zip_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract ``zip_path`` into the new folder ``dest``, refusing anything that could escape it.

    Every member is checked *before* anything is written: absolute paths, drive letters, ``..``
    components, symbolic links and special files are refused with a :class:`DataError` naming
    the member. The archive is then extracted into a temporary sibling folder, which is renamed to
    ``dest`` only when every member was written and CRC-checked; a failure removes it, so ``dest``
    either appears complete or not at all.

    Args:
        zip_path: the archive.
        dest: the folder to create; it must not exist yet. Member ``a/b.png`` becomes
            ``dest/a/b.png``.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists():
        raise DataError(
            f"cannot extract {zip_path} into {dest}: it already exists; delete it or choose "
            "another destination"
        )
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            for info in infos:
                reason = _unsafe_reason(info)
                if reason is not None:
                    raise DataError(
                        f"refusing to extract {zip_path}: member {info.filename!r} is unsafe "
                        f"({reason}); the archive is not trustworthy, get it again from its "
                        "official source"
                    )
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = _sibling_temp(dest, ".extracting")
            tmp.mkdir()
            try:
                _extract_members(zf, infos, zip_path, tmp)
                os.rename(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(
            f"{zip_path} is not a valid zip archive ({exc}); the file is damaged or incomplete: "
            "download it again"
        ) from exc
    except OSError as exc:  # a missing archive, a read-only destination, a full disk
        raise DataError(
            f"cannot extract {zip_path} into {dest} ({exc}); check that the archive exists and "
            "that the destination's folder is writable"
        ) from exc
    return dest


def _extract_members(
    zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], zip_path: Path, tmp: Path
) -> None:
    root = tmp.resolve()
    for info in infos:
        target = tmp.joinpath(*re.split(r"[\\/]", info.filename))
        # Belt and braces after _unsafe_reason: the resolved target must stay inside tmp.
        if not target.resolve().is_relative_to(root):
            raise DataError(
                f"refusing to extract {zip_path}: member {info.filename!r} resolves outside the "
                "destination; the archive is not trustworthy, get it again from its official source"
            )
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # "xb": a duplicated member name must not silently overwrite the first copy.
            with zf.open(info) as src, open(target, "xb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
        except FileExistsError as exc:
            raise DataError(
                f"refusing to extract {zip_path}: member {info.filename!r} appears twice; the "
                "archive is not trustworthy, get it again from its official source"
            ) from exc
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise DataError(
                f"{zip_path} member {info.filename!r} is damaged ({exc}); download the archive "
                "again"
            ) from exc
