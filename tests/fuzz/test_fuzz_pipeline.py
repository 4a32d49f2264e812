"""Fuzzing in CI (a small, fixed example budget): decode → normalise → rules, and rules
on their own. scripts/fuzz runs the same targets for 100k+ inputs.

A crash is any exception other than a QcnodeError, or a broken output contract
(tests/fuzz/harness.py). Crashes already reported (harness.KNOWN) are tolerated here and
pinned by strict-xfail tests in test_fuzz_known.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.dicom_inputs import hostile_file
from tests.fuzz.harness import decode_file, known, run_rules, signature
from tests.fuzz.strategies_rules import drawn_image, mask_plan

CI = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same inputs on every run: CI is not where new crashes are hunted
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _unless_known(exc: BaseException) -> None:
    if not known(signature(exc)):
        raise exc


@CI
@given(data=hostile_file(), plan=mask_plan())
def test_decode_then_rules_never_crash(tmp_path_factory: Any, data: bytes, plan: Any) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "input.dcm"
    path.write_bytes(data)
    try:
        image = decode_file(path)
        if image is not None:
            run_rules(image, plan)
    except Exception as exc:
        _unless_known(exc)


@settings(CI, max_examples=40)
@given(image=drawn_image(), plan=mask_plan(), language=st.sampled_from(["en", "zh"]))
def test_rules_never_crash_on_any_answer_of_the_model(image: Any, plan: Any, language: str) -> None:
    try:
        run_rules(image, plan, language=language)
    except Exception as exc:
        _unless_known(exc)
