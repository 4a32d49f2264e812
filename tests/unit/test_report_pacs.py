"""A real PACS (Orthanc) takes every result object, under the source's patient and study."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Orthanc, storescu
from report_support import header_and_image, source_dataset

from qcnode.report import ReportOptions, build_results
from qcnode.report.examples import example_prediction, example_result


@pytest.mark.slow  # starts Orthanc (~10 s)
def test_orthanc_stores_all_result_objects_in_the_source_study(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    source = source_dataset(charset="GB18030", patient_name="Wang^XiaoDong=王^小东")
    header, image = header_and_image(source)
    objects = build_results(
        header,
        image,
        example_prediction(image),
        example_result(image),
        objects=("sr", "sc", "gsps", "kos"),
        options=ReportOptions(language="zh"),
    )
    files = [tmp_path / "source.dcm"]
    source.save_as(files[0], enforce_file_format=True)
    for obj in objects:
        files.append(tmp_path / f"{obj.Modality}.dcm")
        obj.save_as(files[-1], enforce_file_format=True)
    # -R: propose only the SOP classes of the files (SR, SC, GSPS, KOS, DX)
    sent = storescu(orthanc.dicom_port, files, called=orthanc.ae_title, options=("-R",))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    stored = {i["MainDicomTags"]["SOPInstanceUID"]: i for i in orthanc.instances()}
    assert set(stored) == {str(header.SOPInstanceUID)} | {str(o.SOPInstanceUID) for o in objects}
    studies = orthanc.get("/studies")
    assert len(studies) == 1  # results joined the source's study
    patients = orthanc.get("/patients")
    assert len(patients) == 1
    name = orthanc.get(f"/patients/{patients[0]}")["MainDicomTags"]["PatientName"]
    assert name == "Wang^XiaoDong=王^小东"
    series = orthanc.get(f"/studies/{studies[0]}")["Series"]
    assert len(series) == 1 + len(objects)
