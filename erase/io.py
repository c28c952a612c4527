"""Atomic file and folder writes, output-folder locks, and one-line disk errors.

An interrupted job never leaves a half-written output; two jobs never write one output folder at
once (`output_lock`); and a full disk or a read-only folder is one line naming the path
(`disk_error_message`), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from erase.errors import EraseError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _disk_error(path: Path, err: OSError) -> EraseError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return EraseError(f"{path}: no space left on device; nothing was overwritten")
    return EraseError(f"{path}: cannot write ({err.strerror or err}); nothing was overwritten")


# errno values that are the environment's doing (disk, permissions, paths), never a bug of ours
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
               errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST, errno.EFBIG, errno.EIO, errno.EBUSY}
# Libraries that write through Rust or C++ report the OS error only in their message.
_MESSAGE_ERRNOS = [(re.compile(r"os error 28|no space left on device|file write failed", re.IGNORECASE), errno.ENOSPC),
                   (re.compile(r"os error 30|read-only file system", re.IGNORECASE), errno.EROFS),
                   (re.compile(r"os error 13|permission denied", re.IGNORECASE), errno.EACCES)]
# torch.save's C++ writer on a full disk says only this (no errno)
_TORCH_WRITE = re.compile(r"PytorchStreamWriter failed|basic_ios::clear: iostream error|inline_container\.cc.*unexpected pos")


def disk_error_message(err: BaseException) -> str | None:
    """One line for a failed write caused by the environment (full disk, read-only or missing folder),
    found anywhere in the exception's chain, e.g. safetensors' `SafetensorError ... os error 28` or
    torch's `PytorchStreamWriter failed writing file`; None for anything else (a bug: keep its traceback)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, EraseError):
            return None
        code = err.errno if isinstance(err, OSError) else None
        if code not in _ENV_ERRNOS:
            text = str(err)
            code = next((c for pattern, c in _MESSAGE_ERRNOS if pattern.search(text)), None)
        if code is not None:
            what = "no space left on device" if code in (errno.ENOSPC, errno.EDQUOT) else os.strerror(code).lower()
            name = getattr(err, "filename", None)
            return f"{name}: {what}" if name else what
        if _TORCH_WRITE.search(str(err)):
            return "writing a file failed (is the disk full?)"
        err = err.__cause__ or err.__context__
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _disk_error(path, err) from err
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _disk_error(path, err) from err
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename.

    On any exception the temporary folder is removed and `path` is left as it was.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise EraseError(f"{path}: already exists (pass --overwrite to replace it)")
    if path.exists() and not path.is_dir():
        raise EraseError(f"{path}: exists and is not a folder; remove it or choose another destination")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    except OSError as err:
        raise _disk_error(path, err) from err
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise _disk_error(path, err) from err
        if isinstance(err, Exception) and disk_error_message(err) is not None:  # e.g. safetensors' own error type
            raise EraseError(f"{path}: {disk_error_message(err)}; nothing was overwritten") from err
        raise


# ---------------------------------------------------------------------------- output folders


def check_out_dir(path: str | os.PathLike, flag: str = "--out", create: bool = False) -> Path:
    """Check that output folder `path` can be written (creating it only if `create`): one line if not.

    Without `create`, the nearest existing folder on the way must be writable, so a command that
    fails early (a bad model, a bad suite) leaves no empty folder behind.
    """
    path = Path(path).expanduser()
    if path.is_symlink() and not path.exists():
        raise EraseError(f"{flag} {path}: a broken symlink or a symlink loop; remove it or choose another folder")
    if path.exists() and not path.is_dir():
        raise EraseError(f"{flag} {path}: exists and is not a folder; choose another folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EraseError(f"{flag} {path}: cannot create the folder ({err.strerror or err})") from None
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise EraseError(f"{flag} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EraseError(f"{flag} {path}: {probe} is not writable (read-only file system or no permission)")
    return path


def _holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text(encoding="utf-8"))
        return f"{info['command']} (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it is starting)"


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}\.tmp|old-\d+)$")  # mkstemp/mkdtemp's and atomic_dir's


def _remove_stale_temps(path: Path) -> None:
    """Temp files and folders of writes into `path` that died mid-way (kill -9, power loss).

    Called only while holding `path`'s lock: every writer of `path` holds it, so no live process
    owns these. Only this module's temp names are touched (`.NAME.XXXXXXXX.tmp`, `.NAME.old-PID`):
    beside `path` for NAME = path's name, and inside `path` for its direct entries. An `.old-PID`
    folder whose NAME is missing (a kill between atomic_dir's two renames) is renamed back.
    """
    places = [(path.parent, {path.name})]
    if path.is_dir():
        places.append((path, None))
    for folder, names in places:
        with contextlib.suppress(OSError):
            for p in folder.iterdir():
                m = _TEMP_NAME.match(p.name)
                if not m or (names is not None and m["name"] not in names):
                    continue
                target = folder / m["name"]
                if ".old-" in p.name and not target.exists() and not target.is_symlink():
                    os.replace(p, target)  # killed between atomic_dir's two renames: the old one comes back
                elif p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, command: str, flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on output `path` (a folder) while a command writes it.

    The lock is filelock's `FileLock` (flock) on `.NAME.lock` beside `path`: the kernel drops it
    when its holder exits, however it exits, so a lock left by a dead process (kill -9) is simply
    taken over. A second writer is refused at once with one line naming the holder (command, pid,
    host: written into the lock file). Stale temp files of earlier killed writes into `path` are
    removed once the lock is held. The lock file is removed on release while still held; filelock
    checks that the inode it locked is still linked, so a waiter never holds a removed file.
    """
    from filelock import FileLock, Timeout

    path = Path(path).expanduser().absolute()
    lock_file = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EraseError(f"{flag} {path}: cannot create its parent folder ({err.strerror or err})") from None
    lock = FileLock(str(lock_file), mode=0o666 & ~_umask())
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise EraseError(f"{flag} {path}: in use by {_holder(lock_file)}; wait for it to finish "
                         "or choose another folder") from None
    except OSError as err:
        raise EraseError(f"{flag} {path}: cannot take the output lock {lock_file.name} ({err.strerror or err})") from None
    try:
        info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}
        with contextlib.suppress(OSError), open(lock_file, "r+", encoding="utf-8") as f:
            f.truncate(0)
            f.write(json.dumps(info))
        _remove_stale_temps(path)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)  # while still holding it (see the docstring)
        lock.release()


def command_line() -> str:
    """`erase train --config x.yaml ...`, shortened: what a lock holder was started as."""
    text = " ".join(["erase", *sys.argv[1:]])
    return text if len(text) <= 120 else text[:117] + "..."


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes, read in chunks (suites, model and detector weights in results.json)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
