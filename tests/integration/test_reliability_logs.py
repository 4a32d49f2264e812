"""No PHI in ordinary logs (issue 8): a node process fed images full of patient data,
through every path that logs (stored, duplicate, refused, not a chest, undecodable,
delivery failing then succeeding), must not write any of it to its log."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Orthanc, radiograph, wait_for
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_delivery import node_settings
from tests.reliability.support import Modality, delivery_figures

PHI = {
    "PatientName": "Doe^Janet^Q",
    "PatientID": "PHI-7731-XQ",
    "PatientBirthDate": "19370214",
    "AccessionNumber": "ACC99812377",
    "ReferringPhysicianName": "Welby^Marcus",
    "StudyID": "STUDY-PHI-42",
    "InstitutionName": "Hospital Of Secret Things",
    "StudyDescription": "CHEST FOR JANET DOE",
}


def with_phi(ds):  # type: ignore[no-untyped-def]
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.slow
def test_no_patient_data_in_the_node_log(tmp_path: Path, orthanc: Orthanc) -> None:
    orthanc.stop()  # deliveries fail first (warnings), then succeed
    settings = node_settings(tmp_path, orthanc, max_dataset_bytes=400_000)
    node = NodeProcess(tmp_path / "n", fake_model=True, **settings)
    node.start()
    try:
        good = [with_phi(radiograph(rows=128, columns=128, seed=i)) for i in range(3)]
        knee = with_phi(radiograph(rows=64, columns=64, body_part="KNEE"))
        big = with_phi(radiograph(rows=600, columns=600))  # refused: larger than 400 kB
        broken = with_phi(radiograph(rows=64, columns=64))
        broken.PixelData = broken.PixelData[:100]  # kept, then an error result
        m = Modality(port=node.port, images=[*good, good[0], knee, big, broken])
        m.run_once()
        assert m.statuses.get(0xA701) == 1, m.statuses
        wait_for(lambda: "delivery to ORTHANC" in node.log(), 60, "a failed delivery")
        orthanc.start()
        figures = delivery_figures(
            node, orthanc, [str(ds.SOPInstanceUID) for ds in good], timeout=120
        )
        assert figures["evaluated"] == 3 and figures["objects_missing_at_pacs"] == 0, figures
    finally:
        node.stop()
    log = node.log()
    assert "delivery to ORTHANC" in log and "refused" in log  # the paths did log
    leaked = [value for value in PHI.values() if value.lower() in log.lower()]
    leaked += [part for part in ("Janet", "PHI-7731", "ACC99812377") if part in log]
    assert not leaked, leaked
