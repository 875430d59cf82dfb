"""A run folder's file names and its crash-safe files: append-only JSONL records and atomically
replaced documents. The bottom layer of both the pipeline (which writes runs) and the viewer
(which reads them).

A run appends one JSON line per evaluated sample and fsyncs after every batch, so a killed run
loses at most the batch in flight. On resume, :func:`read_records` (``repair=True``) truncates a
torn last line away (the only kind of damage an append can leave) and the run skips the samples
already recorded; readers skip that line and never write.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vla_autoprune.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: One JSON line per evaluated sample (:class:`RecordWriter`, :func:`read_records`).
RECORDS_FILE = "records.jsonl"
#: Hydra's record of a job (config, overrides), which the apps write themselves once a run is accepted.
HYDRA_RECORD_DIR = ".hydra"
#: Held (``flock``) by the process evaluating into a run folder (:func:`run_lock`); holds its pid.
LOCK_FILE = ".run.lock"
#: The run's identity and status (written by :mod:`vla_autoprune.pipeline.app`).
RUN_FILE = "run.json"
#: The run's resolved Hydra config.
CONFIG_FILE = "config.yaml"
#: What a finished run writes last: its summary (:mod:`vla_autoprune.pipeline.app`).
SUMMARY_FILE = "summary.json"
#: Why a multirun job did not run (:class:`~vla_autoprune.errors.NotRunnableError`): ``reason``, ``overrides``.
SKIPPED_FILE = "skipped.json"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see either the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())  # mkstemp makes it 0600; a run's files are as shareable as any
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@functools.cache
def _file_mode() -> int:
    """The mode ``open()`` gives a new file here: 0666 less the process umask (read once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8); see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(folder: str | Path, setting: str) -> None:
    """A one-line :class:`ConfigError` unless ``folder`` exists writable or can be made in its
    nearest existing parent (tried by making and removing a temporary folder there: root ignores
    permission bits); creates nothing. ``setting``: how the user names the folder
    (``hydra.run.dir``, ``out_dir``, ``--out``), for the fix."""
    path = Path(folder).expanduser().absolute()
    parent = path
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is a file")
        tempfile.TemporaryDirectory(dir=parent).cleanup()
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(
            f"cannot write the output folder {path} ({reason}); choose another with {setting}=<folder>"
        ) from None


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s :data:`LOCK_FILE` for the block (an exclusive ``flock``, released by the
    kernel if the process dies): a second process evaluating into the same folder (a sweep started
    twice, a resume while the run still runs) gets a one-line :class:`ConfigError` naming the
    holder, instead of appending its records among the first one's."""
    path = Path(folder) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise ConfigError(
                f"{path.parent} is being evaluated by another process{f' (pid {holder})' if holder else ''}; "
                "wait for it to finish, or give this run another hydra.run.dir / hydra.sweep.dir"
            ) from None
        except OSError as err:  # a file system without locks (some network mounts): run unguarded
            logger.warning("cannot lock %s (%s): nothing stops a second run writing here", path, err)
            locked = False
        else:
            locked = True
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as pretty-printed JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def scan_records(path: str | Path, fix: str = "restore the file") -> tuple[list[dict[str, Any]], int | None]:
    """The records of a JSONL records file, and where a torn last line starts (None: no torn line).

    Reads only. A torn last line (no newline after it: an append in flight, or a run killed
    mid-write) is the only damage an append can leave; it is skipped. A malformed line anywhere else
    means the file was edited or corrupted: a one-line :class:`DataError` ending in ``fix``, since
    silently skipping it would lose results.
    """
    path = Path(path)
    if not path.is_file():
        return [], None
    lines = path.read_bytes().split(b"\n")
    records: list[dict[str, Any]] = []
    good_bytes = 0
    for i, line in enumerate(lines):
        if line.strip():
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                if i == len(lines) - 1:
                    return records, good_bytes
                raise DataError(f"{path}: line {i + 1} is not valid JSON; {fix}") from err
        good_bytes += len(line) + 1
    return records, None


def read_records(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a JSONL records file (:func:`scan_records`), a torn last line skipped.

    ``repair`` (the run itself, resuming): the torn line is also truncated away, so the next append
    starts on a line of its own. Without it the file is never touched: a reader (a report, the
    viewer) may be looking at a run that is still appending.
    """
    fix = "restore the file or rerun with resume=false" if repair else "restore the file"
    records, torn_at = scan_records(path, fix)
    if torn_at is not None and repair:
        logger.warning("Dropping a torn last record in %s (the run was interrupted)", path)
        with Path(path).open("r+b") as f:
            f.truncate(torn_at)
    elif torn_at is not None:
        warn_torn(path)
    return records


def warn_torn(path: str | Path) -> None:
    """What a reader says when it skips a records file's torn last line."""
    logger.warning("%s: skipping its torn last line (the run is still writing, or was killed)", path)


class RecordWriter:
    """Appends JSON records to a JSONL file, durably (flush + fsync per :meth:`write` call)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` (one line each) and make them durable."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
