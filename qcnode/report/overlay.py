"""The overlay picture: the radiograph with structures, findings and a verdict burned in.

Used by the Secondary Capture and available to the dashboard. Sizes are relative to the
picture so that the verdict banner stays legible as a PACS thumbnail (~256 px): the banner's
big line is 5 % of the image height, lines are ~0.3 %. The banner and the side panel sit
*outside* the image, so nothing hides the apices or the costophrenic angles that QC is about.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from qcnode.records import DecodedImage, Family, Finding, Prediction, QCResult, Status, Verdict
from qcnode.report import i18n
from qcnode.report.geometry import coverage_window, mask_contours, to_shapes, trace_grid

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]
RgbImage = npt.NDArray[np.uint8]

STATUS_COLOURS: dict[str, RGB] = {
    Status.FAIL: (235, 50, 50),
    Status.WARN: (255, 170, 0),
    Status.PASS: (40, 200, 90),
    Status.NOT_EVALUABLE: (150, 150, 150),
    Verdict.NOT_APPLICABLE: (120, 120, 120),
    Verdict.ERROR: (130, 80, 160),
}
BANNER_COLOURS: dict[str, RGB] = {
    Verdict.FAIL: (190, 25, 25),
    Verdict.WARN: (215, 135, 0),
    Verdict.PASS: (25, 135, 60),
    Verdict.NOT_APPLICABLE: (95, 95, 95),
    Verdict.ERROR: (100, 60, 130),
}
# Structure colours and whether the inside is tinted. Body and the posterior ribs are not
# drawn: they add clutter, and rib findings carry their own geometry.
STRUCTURE_STYLE: dict[str, tuple[RGB, bool]] = {
    "lung_right": ((0, 160, 255), True),
    "lung_left": ((0, 215, 200), True),
    "heart": ((255, 80, 170), True),
    "clavicle_right": ((255, 230, 0), False),
    "clavicle_left": ((255, 230, 0), False),
    "scapula_right": ((170, 120, 255), False),
    "scapula_left": ((170, 120, 255), False),
    "spine": ((255, 140, 40), False),
    "trachea": ((140, 255, 140), False),
    "humerus_right": ((210, 200, 120), False),
    "humerus_left": ((210, 200, 120), False),
    "sternum": ((255, 190, 130), False),
    "field": ((255, 255, 255), False),
}
_SEVERITY = {Status.FAIL: 0, Status.WARN: 1, Status.NOT_EVALUABLE: 2, Status.PASS: 3}

_CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
)
_LATIN_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)
_LATIN_BOLD_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _first_existing(paths: Iterable[str]) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None)


def cjk_font_path() -> str | None:
    """A font that renders Chinese (Debian fonts-wqy-microhei or fonts-noto-cjk), or None."""
    return _first_existing(_CJK_FONTS)


@lru_cache(maxsize=64)
def _font(size: int, bold: bool, cjk: bool) -> Font:
    path = cjk_font_path() if cjk else None
    if path is None:
        path = _first_existing(_LATIN_BOLD_FONTS if bold else _LATIN_FONTS)
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


@dataclass(frozen=True)
class _Style:
    """Pixel sizes derived from the image part's height."""

    line: int
    big: int
    small: int
    label: int
    panel: int

    @classmethod
    def for_height(cls, height: int) -> _Style:
        return cls(
            line=max(2, round(height / 350)),
            big=max(24, round(height * 0.075)),
            small=max(11, round(height * 0.026)),
            label=max(11, round(height * 0.022)),
            panel=max(11, round(height * 0.019)),
        )


def effective_language(language: str) -> str:
    """``language``, or English when Chinese is asked for and no CJK font is installed."""
    i18n.check_language(language)
    if language == "zh" and cjk_font_path() is None:
        log.warning("no CJK font installed (fonts-wqy-microhei); overlay text falls back to en")
        return "en"
    return language


def _to_gray(pixels: npt.NDArray[np.float32], size: tuple[int, int]) -> Image.Image:
    """[0, 1] MONOCHROME2 pixels to an 8-bit picture of ``size`` (width, height)."""
    # clip to [0, 1] with NaN as 0, in place from there: a radiograph is ~4 M pixels and
    # every temporary costs
    data = np.clip(pixels, 0.0, 1.0)
    data[np.isnan(data)] = 0.0
    data *= np.float32(255.0)
    np.round(data, out=data)
    img = Image.fromarray(data.astype(np.uint8), mode="L")
    if img.size[1] > size[1]:
        # shrinking: Hamming, not Lanczos - a third of the time (Lanczos was the overlay's
        # largest single cost), and RG1's picture differs by 0.3 grey levels on average,
        # 10 at most at a hard edge: the same to the eye
        img = img.resize(size, Image.Resampling.HAMMING)
    elif img.size != size:  # enlarging a small image: Lanczos keeps it sharp
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


def _wrap(text: str, font: Font, width: float, draw: ImageDraw.ImageDraw) -> list[str]:
    """Greedy wrap that breaks at spaces when it can and anywhere (CJK) when it must.

    Each line takes as many characters as fit; where the next one does not, the line
    breaks at its last space (or before that character when it has none). How many fit is
    found by bisection, since a longer prefix is never narrower: measuring every prefix
    cost a tenth of the overlay's time.
    """
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line, i = "", 0
        while i < len(paragraph):
            # the longest run paragraph[i:i + k] that still fits after ``line`` (at least
            # one character when the line is empty)
            lo, hi = (1 if not line else 0), len(paragraph) - i
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if draw.textlength(line + paragraph[i : i + mid], font=font) <= width:
                    lo = mid
                else:
                    hi = mid - 1
            line += paragraph[i : i + lo]
            i += lo
            if i == len(paragraph):
                break
            char = paragraph[i]  # the first character that does not fit
            i += 1
            cut = line.rfind(" ")
            if cut > 0 and char != " ":
                lines.append(line[:cut])
                line = line[cut + 1 :] + char
            else:
                lines.append(line.rstrip())
                line = char.lstrip()
        lines.append(line)
    return lines


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def _unit(unit: str | None, language: str) -> str:
    if unit in (None, "1"):
        return ""
    if unit == "deg":
        return "°"
    if unit == "{ribs}":
        return " 肋" if language == "zh" else " ribs"
    if unit == "%":
        return " %"
    if unit == "mm2":
        return " mm²"
    return f" {unit}"


def value_text(finding: Finding, language: str) -> str:
    """``7.9°`` / ``9 ribs (limit 10)`` - the measurement as drawn next to its geometry."""
    if finding.value is None:
        return ""
    text = _fmt(finding.value) + _unit(finding.unit, language)
    if finding.threshold is not None and finding.status in (Status.WARN, Status.FAIL):
        text += f" ({i18n.text('threshold', language)} {_fmt(finding.threshold)})"
    return text


def _draw_structures(canvas: Image.Image, prediction: Prediction, style: _Style) -> list[str]:
    """Fill lungs/heart lightly, outline every structure; return the names drawn."""
    drawn: list[str] = []
    fill_layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    line_layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    lines = ImageDraw.Draw(line_layer)
    grid, scale = trace_grid(canvas.size)
    for name, (colour, filled) in STRUCTURE_STYLE.items():
        mask = prediction.masks.get(name)
        if mask is None or not mask.any():
            continue
        drawn.append(name)
        # Coverage maps (the fraction of each pixel inside the mask) only in the window
        # around the structure (the rest is 0): the tint at canvas size, outlines traced at
        # 0.5 on the trace grid (smooth, sub-pixel) and simplified to 0.6 canvas pixels.
        if filled:
            cover, origin = coverage_window(mask, canvas.size)
            if cover.size:
                tint = Image.new("RGBA", (cover.shape[1], cover.shape[0]), (*colour, 255))
                tint.putalpha(Image.fromarray(np.round(cover * 60).astype(np.uint8)))
                fill_layer.alpha_composite(tint, dest=origin)
        if grid != canvas.size or not filled:
            cover, origin = coverage_window(mask, grid)
        thin = name == "field" or name.startswith("ribs")
        width = max(1, style.line // 2) if thin else style.line
        outlines = mask_contours(cover, scale=scale, tolerance=0.6 / scale, offset=origin)
        for outline in outlines:
            pts = [(float(x), float(y)) for x, y in outline]
            lines.line([*pts, pts[0]], fill=(*colour, 235), width=width, joint="curve")
    # Over an opaque picture, pasting through a layer's own alpha is the blend
    # alpha_composite makes (the same pixels), without the RGBA copies: half the time.
    canvas.paste(fill_layer, (0, 0), fill_layer)
    canvas.paste(line_layer, (0, 0), line_layer)
    return drawn


def _outlined_text(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Font, fill: RGB
) -> None:
    stroke = max(1, round(getattr(font, "size", 12) / 8))
    draw.text(xy, text, font=font, fill=fill, stroke_width=stroke, stroke_fill=(0, 0, 0))


def _place(
    anchor: tuple[float, float],
    width: float,
    height: float,
    size: tuple[int, int],
    placed: list[tuple[float, float, float, float]],
    offset: float,
) -> tuple[float, float]:
    """Top-left of a label near ``anchor`` that overlaps no earlier label (if possible)."""
    x = max(0.0, min(anchor[0] + offset, size[0] - width))
    y0 = anchor[1] - height * 1.1
    for step in (0, 1, -1, 2, -2, 3, -3, 4, -4):
        y = max(0.0, min(y0 + step * height, size[1] - height))
        box = (x, y, x + width, y + height)
        if not any(
            b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed
        ):
            break
    placed.append(box)
    return x, y


def _draw_findings(
    canvas: Image.Image, result: QCResult, scale: float, style: _Style, language: str, cjk: bool
) -> None:
    draw = ImageDraw.Draw(canvas)
    rows, columns = round(canvas.height / scale), round(canvas.width / scale)
    label_font = _font(style.label, True, cjk)
    ordered = sorted(result.findings, key=lambda f: -_SEVERITY.get(f.status, 3))  # worst on top
    placed: list[tuple[float, float, float, float]] = []
    for finding in ordered:
        colour = STATUS_COLOURS.get(finding.status, (200, 200, 200))
        important = finding.status in (Status.WARN, Status.FAIL)
        width = style.line * 2 if important else max(1, style.line // 2)
        anchor: tuple[float, float] | None = None
        for geometry in finding.geometry:
            for shape in to_shapes(geometry, rows=rows, columns=columns):
                pts = [(float(x) * scale, float(y) * scale) for x, y in shape.points]
                anchor = anchor or pts[0]
                if shape.graphic_type in ("POINT", "MULTIPOINT"):
                    r = style.line * (4 if important else 2)
                    for x, y in pts:
                        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=width)
                        draw.ellipse((x - width, y - width, x + width, y + width), fill=colour)
                else:
                    draw.line(pts, fill=colour, width=width, joint="curve")
        if anchor is None or not important:
            continue  # passing values are listed in the panel; labels would only clutter
        label = f"{i18n.rule_title(finding.rule, language)} {value_text(finding, language)}"
        label = label.strip()
        if label:
            x, y = _place(
                anchor,
                draw.textlength(label, label_font),
                style.label * 1.3,
                canvas.size,
                placed,
                style.line * 5,
            )
            _outlined_text(draw, (x, y), label, label_font, colour)


def _fit(text: str, font: Font, width: float, draw: ImageDraw.ImageDraw) -> str:
    while draw.textlength(text, font=font) > width and len(text) > 2:
        text = text[:-2] + "…"
    return text


def _banner(
    width: int, result: QCResult, style: _Style, language: str, cjk: bool, model_text: str
) -> Image.Image:
    """Verdict in big letters (legible in a thumbnail), families and the warning beside it."""
    big, mid = _font(style.big, True, cjk), _font(style.small, True, cjk)
    small = _font(style.small, False, cjk)
    pad = max(4, style.small // 2)
    height = round(style.big * 1.3 + 2 * pad)
    banner = Image.new("RGB", (width, height), BANNER_COLOURS.get(result.verdict, (90, 90, 90)))
    draw = ImageDraw.Draw(banner)
    if result.verdict == Verdict.ERROR:
        headline = i18n.text("error", language)  # "QC not completed"
    else:
        word = i18n.status_name(result.verdict, language).upper()
        headline = f"{i18n.text('qc', language)} {word}"
    draw.text((pad, pad), headline, font=big, fill=(255, 255, 255))
    x = pad * 3 + draw.textlength(headline, font=big)
    room = width - x - pad
    bad = [
        i18n.family_name(f, language)
        for f in Family
        if result.families.get(f) in (Verdict.FAIL, Verdict.WARN)
    ]
    top = pad + (style.big * 1.3 - style.small * 2.5) / 2
    if bad and result.verdict in (Verdict.FAIL, Verdict.WARN):
        draw.text((x, top), _fit(", ".join(bad), mid, room, draw), font=mid, fill=(255, 255, 255))
    sub = f"{i18n.text('not_for_diagnosis', language)} · {model_text}"
    draw.text(
        (x, top + style.small * 1.35),
        _fit(sub, small, room, draw),
        font=small,
        fill=(255, 255, 255),
    )
    return banner


def _panel(
    height: int,
    width: int,
    result: QCResult,
    structures: list[str],
    style: _Style,
    language: str,
    cjk: bool,
    model_text: str,
) -> Image.Image:
    panel = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(panel)
    size = style.panel
    font, bold = _font(size, False, cjk), _font(size, True, cjk)
    note = _font(max(10, round(size * 0.85)), False, cjk)
    pad = size
    y = float(pad)
    line_h = size * 1.3
    footer_top = height - 2.6 * size
    legend_h = (
        line_h * 1.1 + line_h * ((len(structures) + 1) // 2) + line_h * 0.5 if structures else 0.0
    )
    legend_top = footer_top - legend_h
    bottom = legend_top - line_h  # room for the "+N more" line

    def heading(text: str) -> None:
        nonlocal y
        draw.text((pad, y), text, font=bold, fill=(235, 235, 235))
        y += line_h * 1.1

    def row(colour: RGB, text: str, *, fnt: Font = font, indent: float = 0.0) -> bool:
        nonlocal y
        x0 = pad + indent
        lines = _wrap(text, fnt, width - x0 - pad - size * 1.4, draw)
        if y + line_h * len(lines) > bottom:
            return False
        sw = size * 0.8
        draw.rectangle((x0, y + size * 0.2, x0 + sw, y + size * 0.2 + sw), fill=colour)
        for line in lines:
            draw.text((x0 + size * 1.3, y), line, font=fnt, fill=(230, 230, 230))
            y += line_h
        return True

    heading(i18n.text("families", language))
    for family in Family:
        verdict = result.families.get(family)
        if verdict is None:
            continue
        row(
            STATUS_COLOURS.get(verdict, (150, 150, 150)),
            f"{i18n.family_name(family, language)}: {i18n.status_name(verdict, language)}",
        )
    y += line_h * 0.4
    heading(i18n.text("findings", language))
    ordered = sorted(result.findings, key=lambda f: _SEVERITY.get(f.status, 3))
    shown = 0
    for finding in ordered:
        title = i18n.rule_title(finding.rule, language)
        value = value_text(finding, language)
        status = i18n.status_name(finding.status, language)
        text = f"{title}: {status}" + (f", {value}" if value else "")
        if not row(STATUS_COLOURS.get(finding.status, (150, 150, 150)), text):
            break
        shown += 1
        if finding.message and finding.status in (Status.WARN, Status.FAIL):
            for line in _wrap(finding.message, note, width - 2 * pad - size * 1.3, draw):
                if y + line_h > bottom:
                    break
                draw.text((pad + size * 1.3, y), line, font=note, fill=(170, 170, 170))
                y += line_h * 0.9
    if not result.findings:
        row((150, 150, 150), result.error or i18n.text("no_findings", language))
    elif shown < len(ordered):
        draw.text((pad, y), f"+{len(ordered) - shown} …", font=font, fill=(200, 200, 200))
        y += line_h
    if structures:  # legend: two columns in the space reserved above the footer
        y = legend_top
        heading(i18n.text("legend", language))
        column_w = (width - 2 * pad) / 2
        for i, name in enumerate(structures):
            x0 = pad + (i % 2) * column_w
            yy = y + (i // 2) * line_h
            sw = size * 0.8
            draw.rectangle(
                (x0, yy + size * 0.2, x0 + sw, yy + size * 0.2 + sw), fill=STRUCTURE_STYLE[name][0]
            )
            label = _fit(i18n.structure_name(name, language), font, column_w - size * 1.6, draw)
            draw.text((x0 + size * 1.3, yy), label, font=font, fill=(230, 230, 230))
    footer = _font(size, True, cjk)
    draw.text(
        (pad, height - 2.3 * size),
        i18n.text("not_for_diagnosis", language),
        font=footer,
        fill=(255, 120, 120),
    )
    draw.text((pad, height - 1.2 * size), model_text, font=note, fill=(150, 150, 150))
    return panel


def render_overlay(
    image: DecodedImage,
    prediction: Prediction | None,
    result: QCResult,
    *,
    language: str = "en",
    max_size: int = 1024,
) -> RgbImage:
    """The overlay picture as an RGB uint8 array: banner on top, image, panel on the right.

    The image part keeps the source aspect; its long side is ``max_size`` for large images
    (never upscaled beyond 2x, never under 512 px so text stays readable).
    """
    language = effective_language(language)
    cjk = language == "zh"
    h, w = image.pixels.shape
    long_side = max(h, w)
    target = min(max_size, max(long_side, min(512, 2 * long_side)))
    scale = target / long_side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    style = _Style.for_height(size[1])
    canvas = _to_gray(image.pixels, size).convert("RGB")
    structures = _draw_structures(canvas, prediction, style) if prediction else []
    _draw_findings(canvas, result, scale, style, language, cjk)
    model = result.model
    model_text = f"qcnode · {model.name} {model.version}" if model else "qcnode"
    banner = _banner(size[0] + round(0.42 * size[1]), result, style, language, cjk, model_text)
    panel = _panel(
        size[1], banner.width - size[0], result, structures, style, language, cjk, model_text
    )
    out = Image.new("RGB", (banner.width, banner.height + size[1]), (0, 0, 0))
    out.paste(banner, (0, 0))
    out.paste(canvas, (0, banner.height))
    out.paste(panel, (size[0], banner.height))
    return np.asarray(out, dtype=np.uint8).copy()


def save_png(pixels: RgbImage, path: Path) -> None:
    Image.fromarray(pixels, mode="RGB").save(path, optimize=True)
