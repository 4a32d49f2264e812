"""The Storage SCP's header readers (qcnode.ingestheader) on hand-made hostile headers."""

from __future__ import annotations

import datetime as dt

from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset, FileMetaDataset

from qcnode.ingestheader import CHEST_SOP_CLASSES, header_text, instance_row, is_chest

CR = CHEST_SOP_CLASSES[0]


def test_header_text_joins_values_cuts_to_width_and_reads_absent_as_empty() -> None:
    ds = Dataset()
    ds.OperatorsName = ["DOE^JANE", "ROE^RICHARD"]
    with disable_value_validation():  # a hostile header: longer than SH allows
        ds.StationName = "X" * 80
    assert header_text(ds, "OperatorsName", 256) == "DOE^JANE\\ROE^RICHARD"
    assert header_text(ds, "StationName", 16) == "X" * 16
    assert header_text(ds, "InstitutionName", 64) == ""


def test_instance_row_tolerates_partial_date_and_multi_valued_rows() -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    with disable_value_validation():
        ds.StudyDate = "2026"  # partial: no date, not an error
        ds.BodyPartExamined = "chest"  # lower case: not a valid CS, read as upper case
    ds.Rows = 2048
    ds.add_new(0x00280011, "US", [1024, 512])  # Columns, multi-valued: its first value
    row = instance_row(ds, "1.2.3", CR, "MODALITY_AE_TITLE_TOO_LONG", "10.0.0.1", True)
    assert row["study_date"] is None
    assert (row["rows"], row["columns"]) == (2048, 1024)
    assert row["body_part"] == "CHEST"
    assert row["calling_ae"] == "MODALITY_AE_TITL"  # 16 characters, the column's width
    assert row["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    assert row["modality"] == "" and row["path"] == "" and row["size_bytes"] == 0
    ds.StudyDate = "20261127"
    ds.Rows = None
    row = instance_row(ds, "1.2.3", CR, "AE", "10.0.0.1", False)
    assert row["study_date"] == dt.date(2026, 11, 27)
    assert row["rows"] == 0 and row["applicable"] is False


def test_is_chest_needs_a_chest_sop_class_and_reads_body_part_substrings() -> None:
    assert is_chest(CR, "")
    assert is_chest(CR, "chest pa")
    assert not is_chest(CR, "KNEE")
    assert not is_chest("1.2.840.10008.5.1.4.1.1.7", "CHEST")  # Secondary Capture
