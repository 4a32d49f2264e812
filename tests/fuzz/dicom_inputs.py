"""Hypothesis strategies for hostile DICOM input, shared by the CI fuzz tests and scripts/fuzz.

Two kinds of input, both starting from a valid synthetic radiograph (tests.conftest):

* structured: the dataset is re-encoded correctly but its attributes are absurd or
  inconsistent (sizes, bit depths, photometric, LUTs, windows, spacing, character sets,
  sequences, pixel data that does not match the header, decompression bombs);
* raw: the encoded bytes after the file meta are mutated (flips, absurd lengths,
  truncation, spliced chunks, broken sequence delimiters), so the parser meets them.

Everything is small by default (a fuzz run must not eat the shared machine's memory); the
"huge" cases are headers that claim a huge image, which the decoder must refuse before
allocating.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests.conftest import radiograph

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
ENCAPSULATED = (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGBaseline8Bit)
CHARSETS = (
    "",
    "ISO_IR 100",
    "ISO_IR 192",
    "GB18030",
    "GBK",
    "ISO 2022 IR 87",
    "ISO 2022 IR 149",
    "\\ISO 2022 IR 87",
    "ISO_IR 999",
    "UTF-8",
    "ISO 2022 IR 6\\ISO 2022 IR 58",
    "\x1b$B",
)
TEXT_BYTES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            "张三^李四".encode("gb18030"),
            "Ünïcødé^Näme".encode(),
            b"\x1b$B\x3b\x33\x45\x44\x1b(B",  # ISO 2022 escape into JIS X 0208
            b"\x1b$)C\xff\xfe",  # escape to KS X 1001 then garbage
            b"\xff\xfe\xfd",
            b"\x00" * 8,
            b"^^^^^=^^=",
        ]
    ),
)
NUMBER_TEXT = st.sampled_from(
    ["0", "-1", "1", "0.0001", "1e-30", "1e30", "1e308", "nan", "inf", "-inf", "abc", "", " 2 "]
)


# Fixed-length UIDs: generation must be reproducible (hypothesis replays it) and a fresh UID
# must fit in the encoded bytes of a mutated file (see with_new_uid).
UID_PREFIX = "1.2.826.0.1.3680043.10.1176."
PLACEHOLDER_SOP_UID = UID_PREFIX + "1".ljust(64 - len(UID_PREFIX), "0")


def fixed_uid(n: int) -> str:
    return UID_PREFIX + str(n + 2).ljust(64 - len(UID_PREFIX), "0")


def base_radiograph(draw: Any) -> Dataset:
    """A valid small radiograph with reproducible UIDs."""
    ds = radiograph(
        rows=draw(st.integers(1, 48)),
        columns=draw(st.integers(1, 48)),
        seed=draw(st.integers(0, 3)),
        sop_uid=PLACEHOLDER_SOP_UID,
        study_uid=fixed_uid(0),
    )
    ds.SeriesInstanceUID = fixed_uid(1)
    return ds


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    """Set an attribute, or remove it (None). Text and numbers pydicom would refuse to
    hold are stored as raw bytes, written as they are (a modality can send anything)."""
    if value is None:
        if keyword in ds:
            del ds[keyword]
        return
    if isinstance(value, list | tuple) and value and isinstance(value[0], str):
        value = "\\".join(value)
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    if isinstance(value, bytes):
        tag = Tag(tag_for_keyword(keyword))
        if len(value) % 2:
            value += b" "
        ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
        return
    setattr(ds, keyword, value)


def _several_us(values: list[int]) -> bytes:
    """A US element with several values (Rows = [2, 3]): legal bytes, absurd meaning."""
    return struct.pack(f"<{len(values)}H", *values)


@st.composite
def lut_sequence(draw: Any, *, voi: bool) -> Sequence:
    item = Dataset()
    entries = draw(st.sampled_from([0, 1, 2, 16, 256, 4096, 65535]))
    first = draw(st.sampled_from([0, -5, 100, 65535]))
    bits = draw(st.sampled_from([0, 8, 12, 16, 17, 32]))
    item.LUTDescriptor = [entries, first, bits]
    length = draw(st.sampled_from([0, 1, max(entries, 1), max(entries, 1) + 7]))
    item.LUTData = list(np.linspace(0, 4095, num=length).astype(int)) if length else []
    if not voi:
        item.ModalityLUTType = draw(st.sampled_from(["HU", "OD", "US", ""]))
    return Sequence(draw(st.sampled_from([[], [item], [item, item]])))


@st.composite
def hostile_header(draw: Any, ds: Dataset) -> None:
    """Mutate a dataset's header in place: one to six hostile changes."""
    changes = draw(st.lists(st.integers(0, 18), min_size=1, max_size=6))
    for change in changes:
        try:
            _change(draw, ds, change)
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
            continue  # this change does not apply to what earlier changes made


def _change(draw: Any, ds: Dataset, change: int) -> None:
    if change == 0:  # sizes: zero, huge, a claimed bomb, several values
        rows = draw(st.sampled_from([0, 1, 2, 3, 7, 65535, 12_001, 20_000]))
        columns = draw(st.sampled_from([0, 1, 5, 65535, 12_001, 20_000]))
        _set(ds, "Rows", rows)
        _set(ds, "Columns", columns)
        if draw(st.integers(0, 3)) == 0:
            _set(
                ds,
                draw(st.sampled_from(["Rows", "Columns", "BitsAllocated"])),
                _several_us([2, 3]),
            )
    elif change == 1:
        ds.BitsAllocated = draw(st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64]))
        ds.BitsStored = draw(st.sampled_from([0, 1, 8, 12, 16, 33]))
        ds.HighBit = draw(st.sampled_from([0, 7, 11, 15, 40]))
    elif change == 2:
        ds.PixelRepresentation = draw(st.sampled_from([0, 1, 2]))
    elif change == 3:
        ds.SamplesPerPixel = draw(st.sampled_from([0, 1, 2, 3, 4]))
        if draw(st.booleans()):
            ds.PlanarConfiguration = draw(st.sampled_from([0, 1, 2]))
    elif change == 4:
        ds.PhotometricInterpretation = draw(
            st.sampled_from(
                ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "", "XYZ"]
            )
        )
    elif change == 5:
        _set(ds, "NumberOfFrames", draw(st.sampled_from([None, "0", "1", "2", "-1", "x"])))
    elif change == 6:  # modality LUT: rescale or a LUT sequence
        if draw(st.booleans()):
            _set(ds, "RescaleSlope", draw(NUMBER_TEXT))
            _set(ds, "RescaleIntercept", draw(NUMBER_TEXT))
        else:
            ds.ModalityLUTSequence = draw(lut_sequence(voi=False))
    elif change == 7:  # VOI: windows (mismatched counts too) or a VOI LUT sequence
        if draw(st.booleans()):
            _set(ds, "WindowCenter", draw(st.lists(NUMBER_TEXT, min_size=1, max_size=3)))
            _set(ds, "WindowWidth", draw(st.lists(NUMBER_TEXT, min_size=1, max_size=3)))
            if draw(st.booleans()):
                functions = ["LINEAR", "SIGMOID", "LINEAR_EXACT", "X"]
                ds.VOILUTFunction = draw(st.sampled_from(functions))
        else:
            ds.VOILUTSequence = draw(lut_sequence(voi=True))
    elif change == 8:  # spacing
        keyword = draw(st.sampled_from(["ImagerPixelSpacing", "PixelSpacing"]))
        values = draw(st.lists(NUMBER_TEXT, min_size=1, max_size=3))
        _set(ds, keyword, values)
    elif change == 9:  # character sets and text that does not fit them
        _set(ds, "SpecificCharacterSet", draw(st.sampled_from(CHARSETS)) or None)
        for keyword in ("PatientName", "StationName", "OperatorsName", "InstitutionName"):
            if draw(st.booleans()):
                _set(ds, keyword, draw(TEXT_BYTES))
    elif change == 10:  # pixel data that does not match the header
        data = bytes(ds.get("PixelData", b"") or b"")
        how = draw(st.integers(0, 4))
        if how == 0:
            ds.PixelData = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
        elif how == 1:
            ds.PixelData = data + draw(st.binary(min_size=1, max_size=64))
        elif how == 2:
            ds.PixelData = b""
        elif how == 3:
            del ds.PixelData
        else:
            ds.PixelData = data[:-1] if data else b"\x00"  # odd length
    elif change == 11:  # malformed sequences: empty items, deep nesting, junk items
        depth = draw(st.integers(1, 30))
        inner = Dataset()
        inner.CodeValue = draw(st.sampled_from(["", "T-D3000", "\x00\xff"]))
        for _ in range(depth):
            outer = Dataset()
            outer.ReferencedImageSequence = Sequence([inner])
            inner = outer
        ds.ReferencedImageSequence = inner.ReferencedImageSequence
        ds.ViewCodeSequence = Sequence(draw(st.sampled_from([[], [Dataset()], [inner]])))
    elif change == 12:  # header facts the rules and the dashboard read
        ds.ViewPosition = draw(st.sampled_from(["PA", "AP", "LL", "RL", "LATERAL", "", "??"]))
        ds.BodyPartExamined = draw(st.sampled_from(["CHEST", "", "KNEE", "chest", "胸部"]))
        _set(ds, "PatientOrientation", draw(st.sampled_from(["L\\F", "A\\F", "", "X\\Y\\Z"])))
        ds.ImageLaterality = draw(st.sampled_from(["", "L", "R", "B", "U", "?"]))
    elif change == 13:  # exposure indices
        for keyword in ("ExposureIndex", "TargetExposureIndex", "DeviationIndex"):
            if draw(st.booleans()):
                _set(ds, keyword, draw(NUMBER_TEXT))
    elif change == 14:  # dates and strings of absurd length
        _set(
            ds,
            "StudyDate",
            draw(st.sampled_from(["", "2026", "20261399", "abcdefgh", "1" * 64])),
        )
        ds.Manufacturer = "M" * draw(st.sampled_from([0, 64, 70, 5000]))
    elif change == 15:  # identifiers missing or odd
        keyword = draw(
            st.sampled_from(["SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"])
        )
        _set(ds, keyword, draw(st.sampled_from([None, "", "1.2.3", "CT", "x" * 80])))
    elif change == 16:  # several frames claimed, pixel data for one
        _set(ds, "NumberOfFrames", draw(st.sampled_from(["2", "3", "1000000"])))
    elif change == 17:  # float pixel data in place of integer pixels
        if "PixelData" in ds:
            n = 16 * 16
            del ds.PixelData
            values = draw(st.sampled_from([0.0, np.nan, np.inf, 1e38]))
            ds.FloatPixelData = np.full(n, values, dtype=np.float32).tobytes()
            ds.BitsAllocated = 32
    else:  # private and unknown elements with odd VRs
        ds.add_new(0x00091010, "UN", draw(st.binary(max_size=64)))
        ds.add_new(0x00091011, "OB", draw(st.binary(max_size=64)))


def _compress(ds: Dataset, syntax: str) -> None:
    """Compress the valid dataset's pixels (before any hostile change)."""
    if syntax == JPEGBaseline8Bit:  # pydicom has no baseline encoder: Pillow makes one
        pixels = (ds.pixel_array >> 4).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.compress(syntax, generate_instance_uid=False)  # keep the placeholder UID


@st.composite
def structured_dataset(draw: Any) -> Dataset:
    """A radiograph whose header and pixel data are hostile but correctly encoded."""
    ds = base_radiograph(draw)
    syntax = draw(st.sampled_from(NATIVE + ENCAPSULATED + (DeflatedExplicitVRLittleEndian,)))
    if syntax in ENCAPSULATED:
        try:
            _compress(ds, syntax)
        except Exception:  # an encoder plug-in missing: stay native
            syntax = ExplicitVRLittleEndian
        if draw(st.booleans()):  # replace the codestream by junk fragments
            fragments = draw(st.lists(st.binary(min_size=2, max_size=64), min_size=1, max_size=3))
            ds.PixelData = encapsulate([f + b"\x00" * (len(f) % 2) for f in fragments])
    ds.file_meta.TransferSyntaxUID = syntax
    if draw(st.integers(0, 9)) > 0:
        draw(hostile_header(ds))
    return ds


@st.composite
def rle_bomb(draw: Any) -> Dataset:
    """A tiny RLE codestream whose header claims a large image (a decompression bomb)."""
    ds = radiograph(rows=8, columns=8, sop_uid=PLACEHOLDER_SOP_UID, study_uid=fixed_uid(0))
    ds.SeriesInstanceUID = fixed_uid(1)
    ds.compress(RLELossless, generate_instance_uid=False)
    side = draw(st.sampled_from([64, 1024, 4096, 12_000, 30_000]))
    ds.Rows = side
    ds.Columns = side
    return ds


def encode(ds: Dataset) -> bytes:
    """Part 10 bytes (the writer may refuse a hostile value: the caller skips the input)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def meta_length(data: bytes) -> int:
    """Offset of the dataset after the preamble and the file meta group."""
    if data[128:132] != b"DICM":
        return 0
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length


@st.composite
def raw_mutation(draw: Any, data: bytes) -> bytes:
    """Mutate the encoded dataset (never the file meta, so that it can still be sent)."""
    start = meta_length(data)
    body = bytearray(data[start:])
    for _ in range(draw(st.integers(1, 6))):
        if not body:
            break
        pos = draw(st.integers(0, len(body) - 1))
        kind = draw(st.integers(0, 6))
        if kind == 0:  # flip a byte
            body[pos] ^= draw(st.integers(1, 255))
        elif kind == 1:  # an absurd 4-byte length
            value = draw(st.sampled_from([0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 1, 3, 0x10000]))
            body[pos : pos + 4] = struct.pack("<I", value)
        elif kind == 2:  # a 2-byte length (explicit VR short form)
            body[pos : pos + 2] = struct.pack("<H", draw(st.sampled_from([0, 1, 0xFFFF])))
        elif kind == 3:  # truncate
            del body[pos:]
        elif kind == 4:  # splice a chunk of itself elsewhere
            end = min(len(body), pos + draw(st.integers(1, 256)))
            at = draw(st.integers(0, len(body)))
            body[at:at] = body[pos:end]
        elif kind == 5:  # sequence/item delimiters where they do not belong
            tag = draw(
                st.sampled_from([b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"])
            )
            body[pos:pos] = tag + draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00" * 4]))
        else:  # random bytes inserted
            body[pos:pos] = draw(st.binary(min_size=1, max_size=32))
    return data[:start] + bytes(body)


@st.composite
def hostile_file(draw: Any) -> bytes:
    """Part 10 bytes: structured, raw-mutated, or a bomb."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every odd value we make
        return draw(_hostile_file())


@st.composite
def _hostile_file(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["structured", "structured", "raw", "bomb"]))
    ds = draw(rle_bomb()) if kind == "bomb" else draw(structured_dataset())
    try:
        data = encode(ds)
    except Exception:  # pydicom cannot encode what we made: try the valid radiograph
        data = encode(
            radiograph(rows=16, columns=16, sop_uid=PLACEHOLDER_SOP_UID, study_uid=fixed_uid(0))
        )
    if kind == "raw":
        data = draw(raw_mutation(data))
    return data


def with_new_uid(data: bytes) -> tuple[bytes, str]:
    """The same bytes with a fresh SOP Instance UID of the same length (in the file meta
    and wherever the dataset still holds it), so that each sent input is a new instance."""
    uid = generate_uid(prefix=UID_PREFIX)
    uid = uid.ljust(len(PLACEHOLDER_SOP_UID), "0")[: len(PLACEHOLDER_SOP_UID)]
    return data.replace(PLACEHOLDER_SOP_UID.encode(), uid.encode()), uid
