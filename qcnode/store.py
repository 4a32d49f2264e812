"""Durable files under ``data_dir``: received instances and result objects.

A file counts as kept only after its bytes and its directory entry are fsync'd; only then
may ingest answer C-STORE success. Files are written (or received) into ``data_dir/tmp``
and renamed into place, so a crash never leaves a half-written file under a final name.
Layout: ``instances/<2 hex>/<SOP Instance UID>.dcm``, ``results/<2 hex>/<UID>.dcm`` and
``masks/<2 hex>/<source UID>.npz`` (sharded by a hash of the UID so that no directory grows huge).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from qcnode.errors import StorageError
from qcnode.records import BoolMask

MASK_MAX_SIDE = 1024


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


class FileStore:
    """Where ingest keeps what it received and the worker keeps what it produced."""

    def __init__(self, *, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        for sub in ("tmp", "instances", "results", "masks", "rejected"):
            self._ensure_dir(self.root / sub)

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

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def keep_received(self, received: Path, sop_instance_uid: str) -> tuple[str, int]:
        """Move a received Part 10 file into place durably; return (relative path, size).

        ``received`` is normally in ``data_dir/tmp`` (same file system: a rename); from
        elsewhere it is copied.
        """
        rel = self._relative("instances", sop_instance_uid)
        return str(rel), self._install(received, rel, move=True)

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
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".dcm")
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
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".npz")
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
