"""Header consistency: the header's view vs the detected one, and a usable pixel spacing."""

from __future__ import annotations

from qcnode.records import Finding, Status
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import Subject
from qcnode.rules.messages import make

FRONTAL_POSITIONS = frozenset({"PA", "AP", "PA ERECT", "AP SUPINE", "FRONTAL"})
LATERAL_POSITIONS = frozenset({"LL", "RL", "LAT", "LATERAL", "RLD", "LLD"})


def header_view(view_position: str) -> str | None:
    """'frontal', 'lateral' or None for an absent/unknown ViewPosition."""
    v = view_position.strip().upper()
    if v in FRONTAL_POSITIONS:
        return "frontal"
    if v in LATERAL_POSITIONS:
        return "lateral"
    return None


def view(s: Subject, cfg: RulesConfig) -> Finding:
    rule = "metadata.view"
    vp = s.image.meta.view_position
    expected = header_view(vp)
    if expected is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, None, "no_header", header=vp or "-")
    if expected == s.view.value:
        return make(s, rule, Status.PASS, None, None, "pass", header=vp, detected=s.view.value)
    status = Status(cfg.metadata.view_mismatch_status)
    return make(s, rule, status, None, None, "mismatch", header=vp, detected=s.view.value)


def spacing(s: Subject, cfg: RulesConfig) -> Finding:
    """Header spacing present, plausible and consistent with the anatomy; else warn."""
    rule, m = "metadata.spacing", cfg.metadata
    header = s.image.spacing_mm
    used = min(s.sy, s.sx) / s.stride
    if header is None:
        return make(s, rule, Status.WARN, used, None, f"estimated_{s.spacing_source}")
    value = min(header)
    if s.spacing_source == "anatomy_override":
        return make(s, rule, Status.WARN, value, None, "disagrees", anatomy=used)
    if not m.spacing_min_mm <= value <= m.spacing_max_mm:
        return make(s, rule, Status.WARN, value, m.spacing_max_mm, "implausible")
    return make(s, rule, Status.PASS, value, None, "pass")
