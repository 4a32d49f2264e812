"""Deterministic UIDs and the geometry conversions shared by SR, GSPS and overlay."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import UID

from qcnode.records import Geometry
from qcnode.report import uids
from qcnode.report.geometry import mask_contours, to_shapes


def test_uids_depend_on_source_model_and_kind_only() -> None:
    a = uids.instance_uid("1.2.3.4", "net/1", "sr")
    assert a == uids.instance_uid("1.2.3.4", "net/1", "sr")
    assert a.startswith("2.25.") and UID(a).is_valid
    others = {
        uids.instance_uid("1.2.3.5", "net/1", "sr"),
        uids.instance_uid("1.2.3.4", "net/2", "sr"),
        uids.instance_uid("1.2.3.4", "net/1", "sc"),
        uids.instance_uid("1.2.3.4", None, "sr"),
        uids.series_uid("1.2.3.4", "net/1", "sr"),
    }
    assert a not in others and len(others) == 5
    # parts are separated: ("1.2", "3") and ("1.2.3", "") do not collide
    assert uids.derived_uid("1.2", "3") != uids.derived_uid("1.23", "")


def test_uid_under_an_organisation_root_is_valid_and_full_length() -> None:
    uid = uids.instance_uid("1.2.3.4", "net/1", "sr", root="1.2.826.0.1.3680043.10.543")
    assert uid.startswith("1.2.826.0.1.3680043.10.543.") and uid.is_valid and len(uid) <= 64
    with pytest.raises(ValueError):
        uids.derived_uid("x", root="1." + "2" * 60)


def test_to_shapes_shifts_to_pixel_corners_clips_and_closes_polygons() -> None:
    point = to_shapes(Geometry("point", ((10.0, 20.0),)), rows=100, columns=50)
    assert point[0].graphic_type == "POINT"
    assert point[0].points.tolist() == [[10.5, 20.5]]
    multi = to_shapes(Geometry("point", ((1.0, 1.0), (2.0, 2.0))), rows=100, columns=50)
    assert multi[0].graphic_type == "MULTIPOINT" and len(multi[0].points) == 2
    poly = to_shapes(Geometry("polygon", ((0, 0), (80, 0), (80, 150))), rows=100, columns=50)[0]
    assert poly.graphic_type == "POLYLINE"
    assert poly.points[0].tolist() == poly.points[-1].tolist()  # closed
    assert poly.points[:, 0].max() == 50 and poly.points[:, 1].max() == 100  # clipped
    assert to_shapes(Geometry("polyline", ()), rows=10, columns=10) == []
    nan = to_shapes(Geometry("polyline", ((float("nan"), 1.0), (3.0, 4.0))), rows=10, columns=10)
    assert nan[0].graphic_type == "POINT"


def test_mask_contours_follow_pixel_edges_and_drop_specks() -> None:
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:30, 20:50] = True  # rectangle: columns 20..49, rows 10..29
    mask[50, 5] = True  # a one-pixel speck
    mask[0:8, 70:80] = True  # touching the image border: still a closed outline
    outlines = mask_contours(mask, tolerance=0.1)
    assert len(outlines) == 2
    rect = min(outlines, key=lambda o: float(o[:, 0].min()))
    assert rect[:, 0].min() == pytest.approx(20.0, abs=0.5)
    assert rect[:, 0].max() == pytest.approx(50.0, abs=0.5)
    assert rect[:, 1].min() == pytest.approx(10.0, abs=0.5)
    assert rect[:, 1].max() == pytest.approx(30.0, abs=0.5)
    half = mask_contours(mask, scale=0.5, tolerance=0.1)
    assert max(float(o[:, 0].max()) for o in half) == pytest.approx(40.0, abs=0.5)
    assert mask_contours(np.zeros((5, 5), dtype=bool)) == []


def test_validate_command_line_reports_errors(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from report_support import header_and_image, source_dataset

    from qcnode.report import build_sr
    from qcnode.report.examples import example_result
    from qcnode.report.validate import main

    header, image = header_and_image(source_dataset())
    good = tmp_path / "sr.dcm"
    build_sr(header, example_result(image)).save_as(good, enforce_file_format=True)
    assert main([str(good)]) == 0
    bad = tmp_path / "bad.dcm"
    broken = build_sr(header, example_result(image))
    del broken.CompletionFlag  # Type 1 in the SR Document General module
    broken.save_as(bad, enforce_file_format=True)
    assert main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "sr.dcm: 0 error(s)" in out and "Error" in out


def test_coverage_of_the_bounding_box_matches_a_whole_mask_resample() -> None:
    """Resampling only around the mask changes values at most by PIL's window rounding."""
    from PIL import Image

    from qcnode.report.geometry import coverage

    def whole(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        shrink = size[1] <= mask.shape[0]
        img = img.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.float32) / 255.0

    rng = np.random.default_rng(1)
    for _ in range(120):
        h, w = (int(n) for n in rng.integers(50, 400, size=2))
        mask = np.zeros((h, w), dtype=bool)
        a, b = sorted(int(n) for n in rng.integers(0, h, size=2))
        c, d = sorted(int(n) for n in rng.integers(0, w, size=2))
        mask[a : b + 1, c : d + 1] = rng.random((b - a + 1, d - c + 1)) < 0.9
        f = float(rng.uniform(0.1, 2.5))
        size = (max(2, int(w * f)), max(2, int(h * f)))
        bound = 2 * max(size[0] / w, size[1] / h) + 0.01 if f <= 1 else 0.01
        assert np.abs(coverage(mask, size) - whole(mask, size)).max() <= bound
    assert not coverage(np.zeros((30, 40), dtype=bool), (20, 15)).any()


def _ellipse_mask(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.asarray(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0)


def test_mask_contours_of_a_coverage_window_equal_those_of_the_whole_grid() -> None:
    """The overlay and the GSPS trace the window around a structure only: same outlines."""
    from qcnode.report.geometry import coverage, coverage_window

    mask = _ellipse_mask(700, 600, 300, 250, 180, 90) | _ellipse_mask(700, 600, 600, 500, 40, 30)
    for size in ((300, 350), (600, 700), (900, 1050)):
        window, origin = coverage_window(mask, size)
        assert window.shape[0] < size[1] and window.shape[1] < size[0]
        whole = mask_contours(coverage(mask, size), tolerance=0.6, scale=2.0)
        part = mask_contours(window, tolerance=0.6, scale=2.0, offset=origin)
        assert len(part) == len(whole) == 2
        for a, b in zip(part, whole, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
    empty, _ = coverage_window(np.zeros((30, 40), dtype=bool), (20, 15))
    assert empty.size == 0 and mask_contours(empty) == []


def test_simplified_outlines_stay_within_tolerance_of_the_traced_line() -> None:
    """Douglas-Peucker (GEOS): every traced point lies within ``tolerance`` of the outline,
    whose vertices are traced points, and far fewer of them."""
    import shapely
    from skimage import measure

    from qcnode.report.geometry import coverage

    mask = _ellipse_mask(900, 800, 450, 300, 300, 150) & ~_ellipse_mask(900, 800, 500, 420, 120, 90)
    cover = coverage(mask, (600, 675))
    padded = np.pad(cover, 1)
    traced = [(line[:, ::-1] - 0.5) for line in measure.find_contours(padded, 0.5)]
    for tolerance in (0.6, 1.0, 2.0):
        outlines = mask_contours(cover, tolerance=tolerance)
        assert len(outlines) == len(traced) == 1
        line, simple = traced[0], outlines[0]
        assert 4 <= len(simple) < len(line) / 5
        distance = shapely.distance(shapely.points(line), shapely.linestrings(simple))
        assert float(distance.max()) <= tolerance + 1e-3
        on_line = shapely.distance(shapely.points(simple), shapely.linestrings(line))
        assert float(on_line.max()) <= 1e-3


def _wrap_by_character(text: str, font, width: float, draw) -> list[str]:  # type: ignore[no-untyped-def]
    """The overlay's wrap as it was: measure every prefix."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for char in paragraph:
            candidate = line + char
            if draw.textlength(candidate, font=font) <= width or not line:
                line = candidate
                continue
            cut = line.rfind(" ")
            if cut > 0 and char != " ":
                lines.append(line[:cut])
                line = line[cut + 1 :] + char
            else:
                lines.append(line.rstrip())
                line = char.lstrip()
        lines.append(line)
    return lines


@pytest.mark.parametrize("cjk", [False, True])
def test_wrap_by_bisection_breaks_lines_where_measuring_every_prefix_did(cjk: bool) -> None:
    import random

    from PIL import Image, ImageDraw

    from qcnode.report import overlay

    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    words = "Lordotic projection: apices only 2 mm above the clavicle heads (< 8 mm)."
    words += " 肺尖 仅 高于 锁骨头 2 毫米 图像左右镜像 left–right"
    vocabulary = [*words.split(), "", " "]
    rnd = random.Random(7)
    for size in (11, 24):
        font = overlay._font(size, False, cjk)
        for _ in range(40 if cjk else 150):  # CJK text measures slowly
            text = " ".join(rnd.choice(vocabulary) for _ in range(rnd.randint(0, 25)))
            if rnd.random() < 0.2:
                text = text.replace(" ", "")  # nothing to break at: breaks anywhere
            if rnd.random() < 0.1:
                text += "\nsecond paragraph " + text
            width = rnd.choice([5, 40, 80, 150, 300, 1000])
            expected = _wrap_by_character(text, font, width, draw)
            assert overlay._wrap(text, font, width, draw) == expected, (text, width)


def test_pasting_a_layer_through_its_alpha_equals_alpha_compositing_it() -> None:
    """The overlay pastes its tint and line layers onto the opaque picture: same pixels."""
    from PIL import Image

    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    layer = Image.fromarray(rng.integers(0, 256, (120, 160, 4), dtype=np.uint8))
    composite = Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")
    pasted = base.copy()
    pasted.paste(layer, (0, 0), layer)
    assert np.array_equal(np.asarray(pasted), np.asarray(composite))
