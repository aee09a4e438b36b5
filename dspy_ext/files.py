"""Crash-safe files for run folders: atomic writes and a one-process-per-folder lock.

Standard library only, and imports nothing else of dspy-ext, so every layer
can use it.

* :func:`atomic_write_bytes`, :func:`atomic_write_text` and
  :func:`atomic_write_json` write to a temporary file in the target's folder,
  flush it to disk and rename it over the target. A crash (``kill -9``, a full
  disk, a power cut) leaves either the old file or the new one, never half a
  file.
* :class:`RunFolderLock` holds a lock file (pid, host and start time of the
  holder) for as long as a process writes into a run folder. A second process
  gets :class:`RunFolderLocked` naming the holder. A lock left by a process that
  died (same host, pid gone) is taken over with a logged warning.

Example:
    >>> with RunFolderLock("runs/sentiment-ape"):          # doctest: +SKIP
    ...     atomic_write_json("runs/sentiment-ape/run.json", {"score": 0.8})
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

try:  # POSIX: an OS-held lock, released by the kernel when its process dies
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = [
    "LOCK_FILE_NAME",
    "RunFolderLock",
    "RunFolderLocked",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
]

LOCK_FILE_NAME = "run.lock"


def _fsync_folder(folder: Path) -> None:
    # The rename is only durable once the folder entry is on disk (POSIX).
    if os.name != "posix":  # pragma: no cover - Windows cannot open folders
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the data is synced
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` in one step.

    The data goes to a temporary file next to ``path`` (same folder, so the
    rename never crosses file systems), is fsynced, and is renamed over
    ``path`` with :func:`os.replace`. Readers see the old file or the new one,
    never a mix. The temporary file is removed if anything fails. New files get
    the usual permissions (``0o666`` minus the umask).

    Args:
        path: The file to write; its folder must exist.
        data: The complete new content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> atomic_write_bytes("out/program.bin", b"\\x00\\x01")   # doctest: +SKIP
    """
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    # O_EXCL: never write through a file someone else planted under the temp name.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_folder(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` in one step (see :func:`atomic_write_bytes`).

    Line endings are written as given (no platform translation), so a file is
    byte-identical on every OS.

    Args:
        path: The file to write; its folder must exist.
        text: The complete new content.
        encoding: Text encoding.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> atomic_write_text("runs/x/report.md", "# Report\\n")   # doctest: +SKIP
    """
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = False
) -> Path:
    """Replace ``path`` with ``obj`` as JSON in one step (see :func:`atomic_write_bytes`).

    The object is serialised completely before anything is written, so an
    object that cannot be serialised raises ``TypeError``/``ValueError`` and
    leaves the old file untouched. NaN and infinity are refused (they are not
    JSON). The file ends with a newline.

    Args:
        path: The file to write; its folder must exist.
        obj: A JSON-serialisable object.
        indent: Indentation (``None``: one line).
        sort_keys: Sort object keys.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> atomic_write_json("runs/x/run.json", {"calls": 120})   # doctest: +SKIP
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


class RunFolderLocked(ValueError):
    """Another live process holds the run folder's lock.

    Attributes:
        lock_path: The lock file.
        holder: What the lock file says about its holder (``pid``, ``host``,
            ``started``), possibly empty.
    """

    def __init__(self, message: str, *, lock_path: Path, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.lock_path = lock_path
        self.holder = holder


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (``True`` when it cannot be told)."""
    if pid <= 0:
        return False
    if os.name != "posix":  # pragma: no cover - os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process (the lock file is empty or unreadable)"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


class RunFolderLock:
    """Lets one process at a time write into a run folder.

    Entering creates the folder if needed and takes ``folder/run.lock``, which
    records the holder's pid, host and start time. On POSIX the lock is also
    an OS lock (``flock``) on that file, which the kernel releases when the
    process dies, so ``kill -9`` never leaves a folder locked for good.

    * Another live process holds it: :class:`RunFolderLocked` (a
      ``ValueError``) with a one-line message naming that process.
    * The lock file names a process of this host that is gone: the lock is
      taken over and a warning is logged.
    * The lock file names another host: it cannot be checked from here, so it
      is refused; the message says to delete the file if that run is over.

    Leaving removes the lock file. A lock is not re-entrant: a second
    :class:`RunFolderLock` on the same folder in the same process is refused
    too.

    Args:
        folder: The run folder.
        name: The lock file's name inside ``folder``.

    Example:
        >>> with RunFolderLock("runs/sentiment-ape") as lock:       # doctest: +SKIP
        ...     atomic_write_json(lock.folder / "run.json", {"ok": True})
    """

    def __init__(self, folder: str | os.PathLike[str], *, name: str = LOCK_FILE_NAME) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self._fd: int | None = None
        self._record: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunFolderLock:
        """Take the lock (see the class docstring); return ``self``.

        Raises:
            RunFolderLocked: Another process holds the folder.
            OSError: The folder or lock file cannot be created.
        """
        if self._fd is not None:
            raise RunFolderLocked(
                f"run folder {self.folder} is already locked by this lock object",
                lock_path=self.path,
                holder=self._record,
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self._record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[:1],
        }
        if fcntl is not None:
            self._fd = self._acquire_flock()
        else:  # pragma: no cover - Windows
            self._fd = self._acquire_exclusive_create()
        return self

    def release(self) -> None:
        """Remove the lock file and let go of the lock (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Unlink while still holding the OS lock, so nobody takes a lock on a
            # file that is about to vanish (see _acquire_flock's inode check).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        finally:
            os.close(fd)

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # -- internals -----------------------------------------------------------------

    def _refuse(self, holder: dict[str, Any], hint: str) -> RunFolderLocked:
        return RunFolderLocked(
            f"run folder {self.folder} is in use by another process ({_describe(holder)}); {hint}",
            lock_path=self.path,
            holder=holder,
        )

    def _read_holder(self, fd: int | None = None) -> dict[str, Any]:
        try:
            if fd is not None:
                os.lseek(fd, 0, os.SEEK_SET)
                raw = b""
                while chunk := os.read(fd, 65536):
                    raw += chunk
            else:
                raw = self.path.read_bytes()
            holder = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _check_previous(self, holder: dict[str, Any]) -> None:
        """Decide about a lock file left by someone else; raise if it may be live."""
        if not holder:
            return  # an empty file: its writer died between create and write
        host, pid = holder.get("host"), holder.get("pid")
        if host != self._record["host"]:
            raise self._refuse(holder, f"it cannot be checked from this host; delete {self.path} if that run is over")
        if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid) and fcntl is None:
            hint = f"wait for it to finish, or delete {self.path} if it is gone"
            raise self._refuse(holder, hint)  # pragma: no cover
        logger.warning(
            "taking over the stale lock of %s in %s: that process no longer holds it", _describe(holder), self.folder
        )

    def _write_record(self, fd: int) -> None:
        data = json.dumps(self._record).encode("utf-8")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        os.fsync(fd)

    def _acquire_flock(self) -> int:
        assert fcntl is not None
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = self._read_holder(fd)
                    raise self._refuse(holder, "wait for it to finish or use another --out folder") from None
                try:
                    same_file = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same_file = False
                if not same_file:  # its holder removed it while we waited: start over
                    os.close(fd)
                    continue
                previous = self._read_holder(fd)
                # The kernel lock is ours, so whoever wrote `previous` has let go: it died.
                # A lock from another host is still refused (flock over NFS is unreliable).
                self._check_previous(previous)
                self._write_record(fd)
                return fd
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
        raise OSError(f"could not lock {self.path}: it was replaced 100 times in a row")  # pragma: no cover

    def _acquire_exclusive_create(self) -> int:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            except FileExistsError:
                previous = self._read_holder()
                self._check_previous(previous)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            self._write_record(fd)
            return fd
        raise self._refuse(self._read_holder(), "wait for it to finish or use another --out folder")
