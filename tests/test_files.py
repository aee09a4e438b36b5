"""Atomic writes and the run-folder lock, with real second processes and real kills.

The child processes load ``dspy_ext/files.py`` by path: it is a standard-library
leaf, so they start in milliseconds instead of importing DSPy.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import dspy_ext.files as files_module
from dspy_ext.files import (
    LOCK_FILE_NAME,
    RunFolderLock,
    RunFolderLocked,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

FILES_PY = Path(files_module.__file__).resolve()

posix_only = pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL and flock")


def _child(code: str) -> subprocess.Popen[str]:
    """Start a Python child that has the files module as ``files``."""
    prelude = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("files", {str(FILES_PY)!r})
        files = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(files)
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- atomic writes ---------------------------------------------------------------------


def test_atomic_writes_replace_content_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "program.json"
    atomic_write_text(target, "first\n")
    assert target.read_text() == "first\n"
    atomic_write_bytes(target, b"\x00second\r\n")
    assert target.read_bytes() == b"\x00second\r\n"  # no newline translation
    atomic_write_json(target, {"name": "caf\u00e9", "calls": [1, 2]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"name": "caf\u00e9", "calls": [1, 2]}
    assert target.read_text(encoding="utf-8").endswith("\n")
    assert _leftovers(tmp_path) == []


def test_atomic_write_gets_the_permissions_of_an_ordinary_new_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_unserialisable_json_leaves_the_old_file_untouched(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"score": float("nan")})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert _leftovers(tmp_path) == []


def test_a_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    # Renaming a file over a non-empty folder fails for real on every OS.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "inside").write_text("x")
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "busy", "never")
    assert _leftovers(tmp_path) == []


@posix_only
def test_kill_9_during_writes_never_leaves_half_a_file(tmp_path: Path) -> None:
    target = tmp_path / "program.json"
    size = 4_000_000
    child = _child(
        f"""
        from pathlib import Path
        target = Path({str(target)!r})
        payloads = [b"a" * {size}, b"b" * {size}]
        files.atomic_write_bytes(target, payloads[0])
        print("ready", flush=True)
        i = 0
        while True:
            i += 1
            files.atomic_write_bytes(target, payloads[i % 2])
        """
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    time.sleep(0.4)  # several writes are in flight by now
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    content = target.read_bytes()
    assert len(content) == size
    assert content in (b"a" * size, b"b" * size)
    # A killed writer may leave its temp file, never a damaged target.
    assert all(name.startswith(".program.json.") for name in _leftovers(tmp_path))


# -- the run-folder lock ---------------------------------------------------------------


def test_lock_records_its_holder_and_is_removed_on_exit(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with RunFolderLock(folder) as lock:
        assert lock.held
        record = json.loads((folder / LOCK_FILE_NAME).read_text())
        assert record["pid"] == os.getpid()
        assert record["host"] == socket.gethostname()
        assert record["started"]
    assert not lock.held
    assert not (folder / LOCK_FILE_NAME).exists()
    with RunFolderLock(folder):  # free again
        pass


def test_a_second_lock_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with RunFolderLock(tmp_path):
        with pytest.raises(RunFolderLocked, match=f"pid {os.getpid()}"):
            RunFolderLock(tmp_path).acquire()
        assert (tmp_path / LOCK_FILE_NAME).exists()  # the refused attempt did not remove it


@posix_only
def test_a_live_second_process_holding_the_lock_is_named_in_the_error(tmp_path: Path) -> None:
    child = _child(
        f"""
        with files.RunFolderLock({str(tmp_path)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
        print("released", flush=True)
        """
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderLocked) as refused:
            RunFolderLock(tmp_path).acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert f"pid {child.pid}" in message and socket.gethostname() in message
        assert refused.value.holder["pid"] == child.pid
        assert isinstance(refused.value, ValueError)
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "released"
    finally:
        child.kill()
        child.wait(timeout=10)
    with RunFolderLock(tmp_path):  # the child let go
        pass


@posix_only
def test_a_stale_lock_of_a_killed_process_is_taken_over_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    child = _child(
        f"""
        lock = files.RunFolderLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        sys.stdin.readline()
        """
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert json.loads((tmp_path / LOCK_FILE_NAME).read_text())["pid"] == child.pid  # left behind
    with caplog.at_level(logging.WARNING, logger="dspy_ext.files"), RunFolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE_NAME).read_text())["pid"] == os.getpid()
    assert any(f"pid {child.pid}" in r.getMessage() and "stale" in r.getMessage() for r in caplog.records)


def test_a_lock_file_from_another_host_is_refused(tmp_path: Path) -> None:
    other = {"pid": 4242, "host": "some-other-machine", "started": "2024-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_FILE_NAME).write_text(json.dumps(other))
    with pytest.raises(RunFolderLocked, match="some-other-machine.*delete"):
        RunFolderLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE_NAME).read_text()) == other  # not overwritten


def test_an_empty_or_garbled_lock_file_is_taken_over(tmp_path: Path) -> None:
    # A writer that died between creating and filling the lock file leaves it empty.
    for garbage in ("", "{not json", "[1, 2]"):
        (tmp_path / LOCK_FILE_NAME).write_text(garbage)
        with RunFolderLock(tmp_path):
            assert json.loads((tmp_path / LOCK_FILE_NAME).read_text())["pid"] == os.getpid()


def test_exactly_one_of_many_racing_threads_gets_the_lock(tmp_path: Path) -> None:
    start = threading.Barrier(8)
    winners: list[RunFolderLock] = []
    refusals: list[RunFolderLocked] = []
    guard = threading.Lock()

    def contend() -> None:
        start.wait()
        lock = RunFolderLock(tmp_path)
        try:
            lock.acquire()
        except RunFolderLocked as refused:
            with guard:
                refusals.append(refused)
            return
        with guard:
            winners.append(lock)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and len(refusals) == 7
    winners[0].release()
    assert not (tmp_path / LOCK_FILE_NAME).exists()
