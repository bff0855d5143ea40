"""The spool: received instances on disk, exactly as they arrived.

Layout: ``<root>/<study UID>/<series UID>/<SOP instance UID>.dcm``, readable
by the node's user only. A file appears there only complete and on disk:
it is written under ``<root>/.incoming``, fsynced, renamed into place, and
the directories that changed are fsynced, so a crash at any moment leaves
either the whole file or none of it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

INCOMING = ".incoming"
# A DICOM UID, checked before it becomes a path so that no UID can climb out
# of the spool. Leading zeros are tolerated: some modalities send them.
_LENIENT_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")


class SpoolFullError(OSError):
    """The spool's file system has no room (or less than the configured reserve)."""


def is_valid_uid(uid: str) -> bool:
    """A syntactically usable UID. Leading zeros are tolerated: modalities send them."""
    return len(uid) <= 64 and bool(_LENIENT_UID_PATTERN.match(uid))


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / INCOMING
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.incoming.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        for uid in (study_uid, series_uid, sop_uid):
            if not is_valid_uid(uid):
                raise ValueError("not a valid DICOM UID")
        return f"{study_uid}/{series_uid}/{sop_uid}.dcm"

    def path(self, relative: str) -> Path:
        return self.root / relative

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def store(self, relative: str, data: bytes | memoryview) -> Path:
        """Put ``data`` at ``relative`` durably; replaces an older copy atomically."""
        target = self.root / relative
        created = self._make_parents(target.parent)
        fd, temp_name = tempfile.mkstemp(dir=self.incoming, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp_name, 0o600)
            os.replace(temp_name, target)
        except OSError as exc:
            _remove_quietly(Path(temp_name))
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(exc.errno, "no space left in the spool") from exc
            raise
        _fsync_directory(target.parent)
        for directory in created:
            _fsync_directory(directory.parent)
        return target

    def remove(self, relative: str) -> None:
        _remove_quietly(self.root / relative)

    def _make_parents(self, directory: Path) -> list[Path]:
        """mkdir -p with 0700, returning the directories it created, outermost first."""
        missing: list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                pass  # another association created it at the same moment
        return list(reversed(missing))

    def discard_incomplete(self) -> int:
        """Remove files a crash left half-written; returns how many."""
        removed = 0
        for leftover in self.incoming.iterdir():
            _remove_quietly(leftover)
            removed += 1
        return removed

    def files(self) -> Iterator[str]:
        """Every stored instance, as a path relative to the root."""
        for study in os.scandir(self.root):
            if not study.is_dir() or study.name == INCOMING:
                continue
            for series_dir in os.scandir(study.path):
                if not series_dir.is_dir():
                    continue
                for entry in os.scandir(series_dir.path):
                    if entry.name.endswith(".dcm"):
                        yield f"{study.name}/{series_dir.name}/{entry.name}"


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
