"""Rule thresholds: etc/rules.toml read into frozen dataclasses, one per family.

The defaults below equal the committed etc/rules.toml, so that an installed package without
the file behaves the same; a test keeps the two in step. The calibrated values and how they
were chosen are documented in the TOML file, next to each value.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcnode.errors import ConfigError

DEFAULT_RULES_FILE = Path(__file__).resolve().parents[2] / "etc" / "rules.toml"


@dataclass(frozen=True)
class CompletenessConfig:
    apices_margin_mm: float = 5.0
    costophrenic_margin_mm: float = 5.0
    # frontal lateral costophrenic angle on the "visible" lungs (cut at the diaphragm
    # silhouette, when the masks carry them; else the whole lungs) or on the "whole" lungs
    costophrenic_lungs: str = "visible"
    # the frontal margin when the angle is taken on the visible lungs (the model's visible
    # outline stops short of a cut edge)
    costophrenic_visible_margin_mm: float = 7.7
    lateral_walls_margin_mm: float = 5.0
    anteroposterior_margin_mm: float = 5.0
    # No sternum on a lateral: the anterior chest is cut when the lungs/heart reach the
    # field edge within this (mm); farther away it stays not evaluable. < 0 disables.
    sternum_outside_edge_mm: float = 3.0
    # Lateral costophrenic: the lungs' bottom row within this (mm) above the field's bottom
    # edge, their last ..._band_mm at least ..._fraction of their widest row, is a cut base
    # (the model's lungs stop short of the cut); < 0 disables.
    lateral_costophrenic_end_tolerance_mm: float = -1.0  # off: see etc/rules.toml
    lateral_costophrenic_end_band_mm: float = 3.0
    lateral_costophrenic_end_fraction: float = 0.2
    collimation_warn_mm: float = 50.0
    centering_warn_fraction: float = 0.10
    shutter_flat_range: float = 0.008
    shutter_min_level: float = 0.75
    shutter_min_fraction: float = 0.6

    def __post_init__(self) -> None:
        if self.costophrenic_lungs not in ("visible", "whole"):
            raise ConfigError(f"rules: unknown costophrenic_lungs {self.costophrenic_lungs!r}")


@dataclass(frozen=True)
class OrgansConfig:
    lung_min_area_mm2: float = 4000.0
    heart_min_area_mm2: float = 3000.0
    clavicle_min_area_mm2: float = 750.0
    clavicle_exposed_margin_mm: float = 20.0
    spine_min_area_mm2: float = 1500.0
    spine_truncation_fail_mm: float = 120.0
    spine_lung_cut_width_fraction: float = 0.4
    # the field's bottom edge within this (mm) below the lungs' bottom row, where their last
    # spine_lung_end_band_mm is >= that fraction of their widest, also cuts the spine (< 0: off)
    spine_lung_end_tolerance_mm: float = 5.6
    spine_lung_end_band_mm: float = 10.0
    sternum_min_area_mm2: float = 300.0
    truncation_fail_mm: float = 60.0
    lung_truncation_fail_ratio: float = 0.39
    lateral_lung_truncation_fail_ratio: float = 0.55
    sternum_truncation_fail_ratio: float = 1.3
    diaphragm_cut_fail_percent: float = 98.0
    edge_tolerance_mm: float = 2.0
    lateral_edge_tolerance_mm: float = 3.0
    # frontal organs.lungs: fail when the lung extrapolated beyond a field edge is >= this share
    # (organs.lung_loss_share; <= 0: the outline-on-the-edge rule with lung_truncation_fail_ratio)
    lung_loss_fail_share: float = 0.25
    lung_loss_fit_near_mm: float = 5.0
    lung_loss_fit_far_mm: float = 25.0
    lung_loss_fit_shift_mm: float = 5.0


@dataclass(frozen=True)
class ExposureConfig:
    deviation_index_warn: float = 1.0
    deviation_index_fail: float = 3.0
    saturation_fail_percent: float = 1.0
    saturation_level: float = 0.002
    contrast_fail: float = 0.61
    noise_fail: float = 0.033
    noise_fail_lateral: float = 0.027
    spine_through_heart_fail: float = 1.4
    spine_through_heart_delta: float = 0.02
    sharpness_edge_fail_mm: float = 16.0
    # "gradient_ratio" (qcnode/rules/exposure.edge_sharpness) or "edge_width" (heart border)
    sharpness_method: str = "gradient_ratio"
    sharpness_fwhm_fail_mm: float = 5.6
    sharpness_fwhm_fail_mm_lateral: float = 5.3

    def __post_init__(self) -> None:
        if self.sharpness_method not in ("gradient_ratio", "edge_width"):
            raise ConfigError(f"rules: unknown sharpness_method {self.sharpness_method!r}")


@dataclass(frozen=True)
class PositioningConfig:
    rotation_fail_deg: float = 5.0
    rotation_half_width_to_depth: float = 0.185
    rotation_ratio_offset: float = 0.0
    rotation_half_width_to_depth_ap: float = 0.256
    rotation_ratio_offset_ap: float = 0.0
    scapulae_fail_mm: float = 10.0
    inspiration_pass_ribs: int = 10
    inspiration_warn_ribs: int = 9
    inspiration_ribs_at_apex: float = 4.05
    inspiration_mm_per_rib: float = 41.84
    lateral_inspiration_ribs_at_apex: float = 3.25
    lateral_inspiration_mm_per_rib: float = 39.3
    inspiration_estimator: str = "habitus"  # "depth": the v7 formula above
    inspiration_ap_magnification: float = 1.08
    inspiration_habitus_ribs_at_apex: float = 4.58
    inspiration_habitus_mm_per_rib: float = 37.0
    inspiration_heart_ribs_per_mm: float = -0.0081
    tilt_min_mm: float = 8.0
    tilt_max_mm: float = 28.0
    tilt_apex_width_mm: float = 15.0
    orientation_heart_offset_mm: float = 10.0
    orientation_heart_spine_mm: float = 0.0
    lateral_rotation_fail_mm: float = 10.0
    arms_overlap_fail_mm2: float = 100.0

    def __post_init__(self) -> None:
        if self.inspiration_estimator not in ("habitus", "depth"):
            raise ConfigError(
                f"rules: unknown inspiration_estimator {self.inspiration_estimator!r}"
            )


@dataclass(frozen=True)
class MetadataConfig:
    view_mismatch_status: str = "warn"
    spacing_min_mm: float = 0.05
    spacing_max_mm: float = 2.0
    anatomy_lung_span_mm: float = 280.0
    anatomy_lung_depth_mm: float = 200.0
    spacing_anatomy_tolerance: float = 1.6


@dataclass(frozen=True)
class RulesConfig:
    """All thresholds; build with :func:`load_config`."""

    completeness: CompletenessConfig = field(default_factory=CompletenessConfig)
    organs: OrgansConfig = field(default_factory=OrgansConfig)
    exposure: ExposureConfig = field(default_factory=ExposureConfig)
    positioning: PositioningConfig = field(default_factory=PositioningConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)


_SECTIONS: dict[str, type[Any]] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(RulesConfig)
}


def _section(name: str, cls: type[Any], raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"rules: [{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"rules: unknown key(s) in [{name}]: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = getattr(cls(), key)
        try:
            values[key] = type(default)(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"rules: [{name}] {key} = {value!r} is not valid") from exc
    return cls(**values)


def load_config(path: Path | None = None) -> RulesConfig:
    """Read a rules TOML file (None: the packaged etc/rules.toml, or the defaults)."""
    if path is None:
        if not DEFAULT_RULES_FILE.is_file():
            return RulesConfig()
        path = DEFAULT_RULES_FILE
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read rules file {path}: {exc}") from exc
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"rules: unknown section(s): {', '.join(unknown)}")
    sections = {name: _section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    return RulesConfig(**sections)
