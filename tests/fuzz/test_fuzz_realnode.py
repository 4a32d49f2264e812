"""Fuzzing C-STORE over a real network to a real node process that delivers to Orthanc
(tests/fuzz/realnode.py), with a small fixed budget; scripts/fuzz --target cstore-real
runs thousands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings

from qcnode.ingest import SUCCESS
from tests.fuzz.dicom_inputs import hostile_file
from tests.fuzz.realnode import RealNodeTarget
from tests.fuzz.test_fuzz_pipeline import CI


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNodeTarget]:
    t = RealNodeTarget(Path(tmp_path_factory.mktemp("realnode")))
    yield t
    t.close()


@settings(CI, max_examples=40)
@given(data=hostile_file())
def test_hostile_datasets_get_named_statuses_from_a_real_node(
    target: RealNodeTarget, data: bytes
) -> None:
    target.send(data)  # NodeFailure: unnamed status, no response, node process gone


def test_everything_acknowledged_is_qcd_and_delivered(target: RealNodeTarget) -> None:
    assert target.sent >= 30 and target.statuses[SUCCESS] >= 5
    figures, failures = target.finish(timeout=120)
    assert not failures, failures
    assert figures["lost"] == 0 and figures["evaluated_without_sr_sc"] == 0
    assert figures["objects_expected"] > 0  # some reached SR/SC and the PACS
    assert figures["pacs_c_stores_received"] >= figures["objects_expected"]
