"""Fuzzing the report on hostile headers (finding 19): every image the node would keep and
evaluate gets an SR and an SC that dciodvfy accepts (apart from identity values inherited
verbatim from the source). scripts/fuzz --target report runs thousands."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings

from tests.fuzz.dicom_inputs import hostile_file
from tests.fuzz.harness import MaskPlan, report_file
from tests.fuzz.strategies_rules import mask_plan
from tests.fuzz.test_fuzz_pipeline import CI

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BUILT: list[int] = []


@settings(CI, max_examples=50)
@given(data=hostile_file(), plan=mask_plan())
def test_hostile_headers_get_valid_sr_and_sc(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, plan: MaskPlan
) -> None:
    path = Path(tmp_path_factory.getbasetemp()) / "report-input.dcm"
    path.write_bytes(data)
    BUILT.append(report_file(path, plan))  # raises on a crash or an invalid object


def test_the_fuzzer_reached_the_report() -> None:
    assert sum(BUILT) >= 10  # objects built and checked above
