"""Character sets: Chinese patient names round-trip; Chinese text never lands in Latin-1."""

from __future__ import annotations

import dataclasses
import io

import pytest
from report_support import header_and_image, roundtrip, source_dataset

from qcnode.report import ReportOptions, build_results
from qcnode.report.examples import example_prediction, example_result
from qcnode.report.overlay import _font, cjk_font_path, render_overlay
from qcnode.report.validate import assert_valid, dsrdump

NAME = "Wang^XiaoDong=王^小东"
KINDS = ("sr", "sc", "gsps", "kos")


@pytest.mark.parametrize(
    ("charset", "language"),
    [
        ("ISO_IR 192", "zh"),
        ("GB18030", "zh"),
        ("GB18030", "en"),
    ],
)
def test_chinese_patient_name_round_trips(charset: str | list[str], language: str) -> None:
    source = source_dataset(charset=charset, patient_name=NAME)
    assert str(source.PatientName) == NAME  # decoded from the source's bytes
    header, image = header_and_image(source)
    result = example_result(image)
    objects = build_results(
        header,
        image,
        example_prediction(image),
        result,
        objects=KINDS,
        options=ReportOptions(language=language),
    )
    for obj in objects:
        back = roundtrip(obj)
        assert back.SpecificCharacterSet == charset, obj.Modality
        assert str(back.PatientName) == NAME, obj.Modality
        assert back.PatientName.ideographic == "王^小东"
        assert_valid(back)
    sr_text = dsrdump(roundtrip(objects[0]))
    assert f"Patient             : {NAME} " in sr_text  # DCMTK decodes the charset too


def test_chinese_text_in_a_latin1_study_switches_to_utf8() -> None:
    source = source_dataset(charset="ISO_IR 100", patient_name="Müller^Jürgen")
    header, image = header_and_image(source)
    result = example_result(image)
    english = build_results(header, image, None, result, objects=("sr",))[0]
    chinese = build_results(
        header, image, None, result, objects=("sr", "kos"), options=ReportOptions(language="zh")
    )
    assert english.SpecificCharacterSet == "ISO_IR 100"
    for obj in chinese:
        back = roundtrip(obj)
        assert back.SpecificCharacterSet == "ISO_IR 192"
        assert str(back.PatientName) == "Müller^Jürgen"
        assert back.SeriesDescription in ("质控报告", "质控关键图像")
        assert_valid(back)


def test_default_repertoire_source_gets_utf8_only_when_needed() -> None:
    header, image = header_and_image(source_dataset())  # no SpecificCharacterSet: ASCII
    ascii_only = dataclasses.replace(example_result(image), findings=())
    plain = build_results(header, image, None, ascii_only, objects=("sr",))[0]
    assert "SpecificCharacterSet" not in plain
    degrees = build_results(header, image, None, example_result(image), objects=("sr",))[0]
    assert degrees.SpecificCharacterSet == "ISO_IR 192"  # "7.9°" is not ASCII


def test_chinese_overlay_uses_a_cjk_font() -> None:
    assert cjk_font_path() is not None, "install fonts-wqy-microhei (scripts/setup)"
    _, image = header_and_image(source_dataset())
    result = example_result(image)
    en = render_overlay(image, None, result, language="en")
    zh = render_overlay(image, None, result, language="zh")
    assert en.shape == zh.shape
    banner = slice(0, 40)
    assert (en[banner] != zh[banner]).any()
    # the font has real Chinese glyphs: "质" does not render as the missing-glyph box
    font = _font(40, False, True)
    glyph, missing = font.getmask("质"), font.getmask("\U000f0000")
    assert glyph.size != missing.size or bytes(glyph) != bytes(missing)


def _iso2022_ir58_source():  # type: ignore[no-untyped-def]
    """A "\\ISO 2022 IR 58" (GB2312 by code extension) source whose name is encoded as in
    PS3.5 Annex K, escape sequences and all (pydicom itself cannot write that)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = source_dataset(charset=["", "ISO 2022 IR 58"], patient_name="Zhang^XiaoDong")
    raw = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab="
    ds[Tag("PatientName")] = RawDataElement(Tag("PatientName"), "PN", len(raw), raw, 0, False, True)
    return roundtrip(ds), raw


@pytest.mark.parametrize("language", ["en", "zh"])
def test_iso2022_gb2312_name_is_kept_byte_exact_or_cleanly_converted(language: str) -> None:
    source, _ = _iso2022_ir58_source()
    header, image = header_and_image(source)
    received = header.PatientName.original_string  # the bytes as the modality sent them
    assert b"\x1b$)A" in received
    objects = build_results(
        header,
        image,
        None,
        example_result(image),
        objects=("sr", "kos"),
        options=ReportOptions(language=language),
    )
    for obj in objects:
        back = roundtrip(obj)
        assert_valid(back)
        if back.SpecificCharacterSet == ["", "ISO 2022 IR 58"]:
            # the result's own text fits: the name goes back exactly as it came
            buffer = io.BytesIO()
            obj.save_as(buffer, enforce_file_format=True)
            assert received in buffer.getvalue()
        else:  # Chinese text does not round-trip in pydicom's IR 58: UTF-8, name readable
            assert back.SpecificCharacterSet == "ISO_IR 192"
            assert str(back.PatientName) == "Zhang^XiaoDong=张^小东"
    assert language == "zh" or objects[0].SpecificCharacterSet != "ISO_IR 192"
