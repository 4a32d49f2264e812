"""The prepared-CT cache: writers that prepare at once (``qcnode synth`` workers) each leave
a whole cache, and ``qcnode synth`` prepares once, before its pool. A tiny fake CT (the one
of test_synth_ct_missing), so no real CT is needed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcnode.cli import main
from qcnode.synth import ct as ctmod
from tests.unit.test_synth_ct_missing import LUNGS, _fake_ct


@pytest.fixture
def ct_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ct"
    _fake_ct(folder, body=True, labels=(*LUNGS, "liver"))
    return folder


def _same(a: ctmod.PreparedCT, b: ctmod.PreparedCT) -> bool:
    return all(
        bool((getattr(a, f) == getattr(b, f)).all())
        for f in ("soft", "bone", "soft_bits", "bone_bits", "rib_index_right", "rib_index_left")
    ) and (a.spacing_mm, a.origin_index, a.lung_z_mm) == (b.spacing_mm, b.origin_index, b.lung_z_mm)


def test_two_concurrent_prepares_both_succeed_and_leave_one_whole_cache(
    ct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both writers are held between writing their file and renaming it into place, the
    interleaving in which one shared temporary file made the second rename fail (and a
    write into the file the first had just renamed tore the cache)."""
    both = threading.Barrier(2, timeout=30)
    savez = np.savez_compressed

    def held_savez(*args: Any, **kwargs: Any) -> None:
        both.wait()  # both prepared, neither written
        savez(*args, **kwargs)
        both.wait()  # both written, neither renamed

    monkeypatch.setattr(np, "savez_compressed", held_savez)
    results: list[ctmod.PreparedCT] = []
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            results.append(ctmod.load(ct_dir))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 2 and _same(results[0], results[1])
    monkeypatch.undo()
    cache = ctmod.cache_path(ct_dir)
    assert sorted(p.name for p in ct_dir.iterdir() if p.name.startswith("prepared")) == [
        cache.name
    ]  # no temporary file left
    assert _same(ctmod.load(ct_dir), results[0])  # the cache reads back whole


def test_a_torn_cache_is_prepared_again_and_replaced(ct_dir: Path) -> None:
    fresh = ctmod.load(ct_dir)
    cache = ctmod.cache_path(ct_dir)
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 2])
    assert _same(ctmod.load(ct_dir), fresh)
    with np.load(cache) as z:  # replaced by a whole one
        assert sorted(z.files) == sorted(ctmod.prepare(ct_dir))


def test_a_failed_write_leaves_no_temporary_file(
    ct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_a: Any, **_k: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(OSError, match="No space left"):
        ctmod.load(ct_dir)
    assert not [p for p in ct_dir.iterdir() if p.name.startswith("prepared")]


def test_synth_with_workers_prepares_the_ct_once_before_its_pool(
    ct_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qcnode.synth import cli

    monkeypatch.setenv("QCNODE_CT_DIR", str(ct_dir))
    seen: dict[str, bool] = {}

    class Stop(Exception):
        pass

    def no_pool(*_a: object, **_k: object) -> object:
        seen["cache"] = ctmod.cache_path(ct_dir).is_file()
        raise Stop

    monkeypatch.setattr(cli.mp, "get_context", no_pool)
    with pytest.raises(Stop):
        main(["synth", "--out", str(tmp_path / "set"), "--count", "1", "--workers", "2"])
    assert seen == {"cache": True}
