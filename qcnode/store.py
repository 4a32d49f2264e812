"""Durable files under ``data_dir``: received instances and result objects.

A file counts as kept only after its bytes and its directory entry are fsync'd; only then
may ingest answer C-STORE success. Files are written (or received) into ``data_dir/tmp``
and renamed into place, so a crash never leaves a half-written file under a final name.
Layout: ``instances/<2 hex>/<SOP Instance UID>.dcm``, ``results/<2 hex>/<UID>.dcm`` and
``masks/<2 hex>/<source UID>.npz`` (sharded by a hash of the UID so that no directory grows huge).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from pydicom.dataset import Dataset

from qcnode.errors import StorageError
from qcnode.records import BoolMask

MASK_MAX_SIDE = 1024


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a byte range to disk now (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, no wait), so that the fsync before the
    C-STORE response finds most of a large dataset already written. A no-op elsewhere."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a create or rename inside ``path``) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Placed:
    """A received file renamed into place whose fsyncs may still be running."""

    path: str  # relative to data_dir
    size: int
    pending: list[Future[None]]

    def wait(self) -> None:
        """Block until the file and its directory entry are durable."""
        try:
            for future in self.pending:
                future.result()
        except OSError as exc:
            raise StorageError(f"cannot make {self.path} durable: {exc}") from exc


class FileStore:
    """Where ingest keeps what it received and the worker keeps what it produced."""

    def __init__(self, *, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._syncer = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fsync")
        for sub in ("tmp", "instances", "results", "masks", "rejected"):
            self._ensure_dir(self.root / sub)
        self._make_shards(self.root / "instances")

    def _make_shards(self, parent: Path) -> None:
        """Create all 256 shard directories up front (once per data_dir): otherwise the
        first image of each shard pays a mkdir and one more directory fsync."""
        made = False
        for i in range(256):
            shard = parent / f"{i:02x}"
            if not shard.is_dir():
                shard.mkdir(exist_ok=True)
                made = True
            self._known_dirs.add(shard)
        if made:
            fsync_dir(parent)

    def _ensure_dir(self, path: Path) -> None:
        if path in self._known_dirs:
            return
        with self._lock:
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                fsync_dir(path.parent)
            self._known_dirs.add(path)

    @staticmethod
    def _relative(kind: str, uid: str) -> Path:
        if not uid or "/" in uid or uid.startswith("."):
            raise StorageError(f"unusable UID for a file name: {uid!r}")
        shard = hashlib.sha1(uid.encode("ascii", "replace")).hexdigest()[:2]
        return Path(kind) / shard / f"{uid}.dcm"

    def absolute(self, relative: str | Path) -> Path:
        return self.root / relative

    def sweep_tmp(self, *, older_than_s: float = 3600.0) -> int:
        """Remove leftovers of receptions a crash interrupted (never acknowledged). Only old
        files: another ingest process sharing ``data_dir`` may be receiving right now."""
        removed = 0
        cutoff = time.time() - older_than_s
        for path in self.tmp.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def place(self, received: Path, sop_instance_uid: str) -> Placed:
        """Rename a received file into place and start the fsyncs of the file and of its
        directory at once; the caller commits its database row meanwhile, then calls
        ``Placed.wait()`` before answering.

        Renaming first lets one journal commit of the file system carry the file's
        data, its new directory entry and (same disk) the database's WAL append; the
        three fsyncs then mostly wait on the same device flush instead of queueing.

        Why the overlap is safe: nothing is acknowledged before both the file (data and
        directory entry) and the row are durable. If power fails after the row but before
        the file is durable, the modality got no success and re-sends; ingest then finds
        the row, compares the stored file with the new one and replaces it if they differ
        (``same_content``), so no damaged file is ever taken for the acknowledged one.
        """
        rel = self._relative("instances", sop_instance_uid)
        target = self.root / rel
        self._ensure_dir(target.parent)
        fd = os.open(received, os.O_RDONLY)  # the inode, whatever its name becomes
        try:
            size = os.fstat(fd).st_size
            os.replace(received, target)
        except OSError:
            os.close(fd)
            if target.exists():
                raise
            # not renamed (another file system?): the slow, synchronous path
            return Placed(str(rel), self._install(received, rel, move=True), [])

        def sync_file() -> None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        pending = [self._syncer.submit(sync_file), self._syncer.submit(fsync_dir, target.parent)]
        return Placed(str(rel), size, pending)

    def keep_received(self, received: Path, sop_instance_uid: str) -> tuple[str, int]:
        """Move a received Part 10 file into place durably (synchronously)."""
        rel = self._relative("instances", sop_instance_uid)
        return str(rel), self._install(received, rel, move=True)

    def same_content(self, rel: str | Path, other: Path) -> bool:
        """Whether a stored file has exactly the bytes of ``other`` (duplicate check)."""
        stored = self.root / rel
        try:
            if stored.stat().st_size != other.stat().st_size:
                return False
            with stored.open("rb") as a, other.open("rb") as b:
                while True:
                    x, y = a.read(1 << 20), b.read(1 << 20)
                    if x != y:
                        return False
                    if not x:
                        return True
        except OSError:
            return False

    def reject(self, received: Path, reason: str) -> Path:
        """Keep a file we refused (for inspection), never silently drop it."""
        name = f"{os.getpid()}-{threading.get_ident()}-{received.name}.{reason}"
        target = self.root / "rejected" / name
        try:
            shutil.move(received, target)
        except OSError:
            return received
        return target

    def write_object(self, ds: Dataset, kind: str = "results") -> tuple[str, int]:
        """Write a result dataset (Part 10, with its file meta) durably."""
        rel = self._relative(kind, str(ds.SOPInstanceUID))
        try:
            fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".dcm")
        except OSError as exc:
            raise StorageError(f"cannot write result object: {exc}") from exc
        os.close(fd)
        tmp = Path(name)
        try:
            ds.save_as(tmp, enforce_file_format=True)
        except Exception as exc:  # pydicom raises many kinds for unencodable datasets
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write result object: {exc}") from exc
        return str(rel), self._install(tmp, rel, move=True)

    def write_masks(self, sop_instance_uid: str, masks: Mapping[str, BoolMask]) -> str:
        """Keep a prediction's masks for the dashboard: bit-packed, longest side <= 1024.

        The ``.npz`` holds one packed array per structure plus ``shape`` (see
        qcnode.web.overlay.load_masks). Returns the path relative to ``data_dir``.
        """
        rel = self._relative("masks", sop_instance_uid).with_suffix(".npz")
        arrays: dict[str, Any] = {}
        shape: tuple[int, ...] = ()
        for name, mask in masks.items():
            step = max(1, -(-max(mask.shape) // MASK_MAX_SIDE))
            small = np.ascontiguousarray(mask[::step, ::step], dtype=bool)
            shape = small.shape
            arrays[name] = np.packbits(small.ravel())
        arrays["shape"] = np.asarray(shape, dtype=np.int64)
        try:
            fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".npz")
        except OSError as exc:
            raise StorageError(f"cannot write masks: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        except OSError as exc:
            Path(name).unlink(missing_ok=True)
            raise StorageError(f"cannot write masks: {exc}") from exc
        self._install(Path(name), rel, move=True)
        return str(rel)

    def _install(self, source: Path, rel: Path, *, move: bool) -> int:
        target = self.root / rel
        self._ensure_dir(target.parent)
        try:
            fsync_file(source)
            size = source.stat().st_size
            try:
                os.replace(source, target)
            except OSError:
                shutil.copyfile(source, target)  # another file system
                fsync_file(target)
                if move:
                    source.unlink(missing_ok=True)
            fsync_dir(target.parent)
        except OSError as exc:
            raise StorageError(f"cannot keep {rel}: {exc}") from exc
        return size
