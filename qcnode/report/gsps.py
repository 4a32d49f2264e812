"""Grayscale Softcopy Presentation State: the overlay's graphics, non-destructively.

A viewer applies it to the original image, so the radiograph stays untouched and the
reader can switch the annotations off. Basic GSPS has no per-object colour, so colour
comes from one graphic layer per meaning: structures, then pass / warn / fail findings,
then the verdict text.
"""

from __future__ import annotations

from collections.abc import Callable

import highdicom as hd
import numpy as np
import pydicom
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    TextObject,
)

from qcnode.records import Prediction, QCResult, Status, Verdict, View
from qcnode.report import i18n, uids
from qcnode.report.common import (
    ReportOptions,
    copy_patient_and_study,
    evidence_header,
    model_version,
    report_source,
    series_info,
    set_body_part,
    settle_character_set,
    software_versions,
)
from qcnode.report.geometry import coverage_window, mask_contours, to_shapes
from qcnode.report.overlay import STATUS_COLOURS, STRUCTURE_STYLE, value_text

_PIXEL = AnnotationUnitsValues.PIXEL


def _layer(name: str, order: int, description: str, rgb: tuple[int, int, int]) -> GraphicLayer:
    return GraphicLayer(
        layer_name=name,
        order=order,
        description=description,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )


TrackingUid = Callable[..., str]


def _structure_objects(
    prediction: Prediction, rows: int, columns: int, tracking_uid: TrackingUid
) -> list[GraphicObject]:
    # ~1000 px worth of detail is plenty for outlines: trace on a coverage map of that size
    # (a viewer shows them on the full-size image: finer than the overlay's trace grid)
    factor = max(1.0, max(rows, columns) / 1000)
    grid = (max(1, round(columns / factor)), max(1, round(rows / factor)))
    objects = []
    for name in STRUCTURE_STYLE:
        mask = prediction.masks.get(name)
        if mask is None or not mask.any():
            continue
        cover, origin = coverage_window(mask, grid)  # masks are in source pixels
        outlines = mask_contours(cover, scale=rows / grid[1], tolerance=1.0, offset=origin)
        for i, outline in enumerate(outlines):
            pts = np.clip(outline, 0.0, [float(columns), float(rows)]).astype(np.float32)
            if not np.array_equal(pts[0], pts[-1]):
                pts = np.vstack([pts, pts[:1]])
            objects.append(
                GraphicObject(
                    graphic_type=GraphicTypeValues.POLYLINE,
                    graphic_data=pts,
                    units=_PIXEL,
                    tracking_id=name,
                    tracking_uid=tracking_uid("structure", name, str(i)),
                )
            )
    return objects


def _finding_objects(
    result: QCResult,
    status: Status,
    rows: int,
    columns: int,
    language: str,
    tracking_uid: TrackingUid,
) -> tuple[list[GraphicObject], list[TextObject]]:
    graphics: list[GraphicObject] = []
    texts: list[TextObject] = []
    for finding in result.findings:
        if finding.status != status:
            continue
        anchor: tuple[float, float] | None = None
        for geometry in finding.geometry:
            for shape in to_shapes(geometry, rows=rows, columns=columns):
                # GSPS has no MULTIPOINT: one POINT object per point
                if shape.graphic_type == "POLYLINE":
                    parts = [(GraphicTypeValues.POLYLINE, shape.points)]
                else:
                    parts = [(GraphicTypeValues.POINT, p.reshape(1, 2)) for p in shape.points]
                for kind, data in parts:
                    graphics.append(
                        GraphicObject(
                            graphic_type=kind,
                            graphic_data=data,
                            units=_PIXEL,
                            tracking_id=finding.rule,
                            tracking_uid=tracking_uid("finding", finding.rule, str(len(graphics))),
                        )
                    )
                if anchor is None:
                    anchor = (float(shape.points[0][0]), float(shape.points[0][1]))
        if anchor is None:
            continue
        label = f"{i18n.rule_title(finding.rule, language)} {value_text(finding, language)}"
        texts.append(
            TextObject(
                text_value=label.strip()[:1024],
                units=_PIXEL,
                anchor_point=anchor,
                anchor_point_visible=True,
            )
        )
    return graphics, texts


def _verdict_text(result: QCResult, rows: int, columns: int, language: str) -> TextObject:
    words = [
        f"{i18n.text('qc', language)} {i18n.status_name(result.verdict, language).upper()}",
        i18n.text("not_for_diagnosis", language),
    ]
    bad = [
        f"{i18n.rule_title(f.rule, language)}: {i18n.status_name(f.status, language)}"
        for f in result.findings
        if f.status in (Status.FAIL, Status.WARN)
    ]
    text = " · ".join(words) + ("\n" + "; ".join(bad) if bad else "")
    box = (columns * 0.02, rows * 0.01, columns * 0.98, rows * 0.08)
    return TextObject(
        text_value=text[:1024], units=_PIXEL, bounding_box=box, text_justification="LEFT"
    )


def build_gsps(
    source: pydicom.Dataset,
    prediction: Prediction | None,
    result: QCResult,
    *,
    options: ReportOptions | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """GSPS on ``source`` with structure outlines, finding graphics and the verdict."""
    options = options or ReportOptions()
    source = report_source(source, options)
    evidence = evidence_header(source)
    language = options.language
    rows, columns = int(source.Rows), int(source.Columns)
    info = series_info(source, result.model, "gsps", options)
    version = model_version(result.model)

    def tracking_uid(*labels: str) -> str:
        return uids.item_uid(
            str(source.SOPInstanceUID), version, "gsps", *labels, root=options.uid_root
        )

    layers: list[GraphicLayer] = []
    annotations: list[GraphicAnnotation] = []

    def add(layer: GraphicLayer, graphics: list[GraphicObject], texts: list[TextObject]) -> None:
        if graphics or texts:
            layers.append(layer)
            annotations.append(
                GraphicAnnotation(
                    referenced_images=[evidence],
                    graphic_layer=layer,
                    graphic_objects=graphics or None,
                    text_objects=texts or None,
                )
            )

    if prediction is not None:
        add(
            _layer("STRUCTURES", 1, i18n.text("legend", language), (0, 160, 255)),
            _structure_objects(prediction, rows, columns, tracking_uid),
            [],
        )
    for order, status in enumerate((Status.PASS, Status.WARN, Status.FAIL), start=2):
        graphics, texts = _finding_objects(result, status, rows, columns, language, tracking_uid)
        add(
            _layer(
                f"QC_{status.upper()}",
                order,
                i18n.status_name(status, language),
                STATUS_COLOURS[status],
            ),
            graphics,
            texts,
        )
    verdict_colour = STATUS_COLOURS.get(result.verdict, STATUS_COLOURS[Verdict.NOT_APPLICABLE])
    add(
        _layer("QC_VERDICT", 5, i18n.text("qc", language), verdict_colour),
        [],
        [_verdict_text(result, rows, columns, language)],
    )
    inverse = str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[evidence],
        series_instance_uid=info.series_instance_uid,
        series_number=info.series_number,
        sop_instance_uid=info.sop_instance_uid,
        instance_number=info.instance_number,
        manufacturer=options.manufacturer,
        manufacturer_model_name="qcnode",
        software_versions=software_versions(options, result.model)[0],
        device_serial_number=options.device_serial_number,
        content_label="QCNODE_QC",
        content_description=i18n.text("gsps_series", language),
        graphic_annotations=annotations,
        graphic_layers=layers,
        institution_name=options.institution_name,
        content_creator_name=None,
        # MONOCHROME1 sources: the presentation LUT does the inversion (PS3.3 C.11.6)
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape="INVERSE" if inverse else "IDENTITY"
        ),
        series_description=i18n.text("gsps_series", language),
    )
    set_body_part(source, gsps, is_chest=result.view != View.OTHER)
    copy_patient_and_study(source, gsps)
    settle_character_set(source, gsps)
    return gsps
