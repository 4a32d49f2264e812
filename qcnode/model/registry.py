"""The weights registry: which weights file is which model, checked before it is used.

``qcnode/model/weights/registry.toml`` has a ``default`` name and one ``[models.NAME]`` table
per weights file: file, sha256, variant, input size and spacing, structure and view lists,
training recipe, data and code version, metrics. Loading is from local files only; a missing
file, a checksum mismatch or an unknown name is a ModelError (the node refuses to start),
never a silent fallback to random weights. A bare architecture name (``qcnet_d10_w3``) is
not a model name: entries are named by weights (``qcnet_d10_w3_s10``), and the unknown-name
error (UnknownModel) lists that variant's registered weights.

``[ensembles.NAME]`` tables register ensembles: ``members`` names other ``[models.*]``
entries (names, not files, so a member's weights can be replaced under the same name). The
ensemble averages the members' logits (``qcnode.model.network.LogitMean``); its identity is
derived from its members (``ensemble_info``), each member's file is checksum-verified as
usual, and an unknown, nested, repeated or incompatible member is a ModelError.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from qcnode.errors import ModelError, UnknownModel
from qcnode.records import MODEL_CHANNELS, ModelInfo

WEIGHTS_DIR = Path(__file__).with_name("weights")
REGISTRY_FILE = WEIGHTS_DIR / "registry.toml"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    file: str
    sha256: str
    variant: str
    version: str
    input_size: int
    spacing_mm: float
    structures: tuple[str, ...]
    views: tuple[str, ...]
    reference_lung_width_mm: Mapping[str, float]  # per view: the anatomy-based scale
    recipe: Mapping[str, Any] = field(default_factory=dict)
    data_version: str = ""
    code_version: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    # The entry's operating point: a logit offset per mask channel, added before the masks
    # are cut at 0 (positive = more permissive). Chosen for the rules on a calibration set;
    # absent channels get 0. Part of the entry's version: it changes the results.
    mask_bias: Mapping[str, float] = field(default_factory=dict)

    def path(self, weights_dir: Path = WEIGHTS_DIR) -> Path:
        return weights_dir / self.file

    def to_toml(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "variant": self.variant,
            "version": self.version,
            "input_size": self.input_size,
            "spacing_mm": self.spacing_mm,
            "structures": list(self.structures),
            "views": list(self.views),
            "reference_lung_width_mm": dict(self.reference_lung_width_mm),
            "data_version": self.data_version,
            "code_version": self.code_version,
            "recipe": dict(self.recipe),
            "metrics": dict(self.metrics),
            **({"mask_bias": dict(self.mask_bias)} if self.mask_bias else {}),
        }


@dataclass(frozen=True)
class EnsembleEntry:
    """An ensemble of registered models (``members``: ``[models.*]`` names, in order).

    ``version`` is a base: the ensemble's model version is ``f"{version}+{sha256[:8]}"``
    with the derived sha256 (``ensemble_info``), so it changes whenever a member does."""

    name: str
    members: tuple[str, ...]
    version: str = "1.0.0"
    note: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def to_toml(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"members": list(self.members), "version": self.version}
        if self.note:
            doc["note"] = self.note
        if self.metrics:
            doc["metrics"] = dict(self.metrics)
        return doc


# Members' reference lung widths (per view, mm) may differ by this fraction; the ensemble
# uses their mean. More means the members learnt from differently scaled data: an error.
REFERENCE_WIDTH_TOLERANCE = 0.02


def ensemble_info(ensemble: EnsembleEntry, members: Sequence[ModelEntry]) -> ModelInfo:
    """The ensemble's identity in results: sha256 of the members' sha256 hex digests joined
    by newlines (member order, as listed), version = base + the first 8 hex digits."""
    joined = "\n".join(m.sha256 for m in members).encode("ascii")
    sha = hashlib.sha256(joined).hexdigest()
    return ModelInfo(name=ensemble.name, version=f"{ensemble.version}+{sha[:8]}", sha256=sha)


def check_compatible(name: str, members: Sequence[ModelEntry]) -> dict[str, float]:
    """ModelError unless the members share input size, spacing, mask channels and views;
    returns the mean reference lung width per view (they must agree within tolerance)."""
    first = members[0]
    for m in members[1:]:
        for what in ("input_size", "spacing_mm", "structures", "views"):
            if getattr(m, what) != getattr(first, what):
                raise ModelError(
                    f"ensemble {name!r}: members {first.name!r} and {m.name!r} differ in "
                    f"{what} ({getattr(first, what)} vs {getattr(m, what)})"
                )
    return mean_reference_widths(name, [(m.name, m.reference_lung_width_mm) for m in members])


def mean_reference_widths(
    name: str, widths: Sequence[tuple[str, Mapping[str, float]]]
) -> dict[str, float]:
    views = {tuple(sorted(w)) for _, w in widths}
    if len(views) != 1:
        raise ModelError(f"ensemble {name!r}: members have reference lung widths for other views")
    out = {}
    for view in sorted(views.pop()):
        values = [w[view] for _, w in widths]
        mean = sum(values) / len(values)
        if max(values) - min(values) > REFERENCE_WIDTH_TOLERANCE * mean:
            raise ModelError(
                f"ensemble {name!r}: members' reference {view} lung widths differ beyond "
                f"{REFERENCE_WIDTH_TOLERANCE:.0%}: "
                + ", ".join(f"{n} {w[view]:.1f} mm" for n, w in widths)
            )
        out[view] = mean
    return out


def _natural(names: Iterable[str]) -> list[str]:
    """Sorted with digit runs as numbers: ``…_s4`` before ``…_s10``."""
    return sorted(
        names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
    )


def _is_variant(name: str) -> bool:
    """An architecture name of the grid (``qcnode train --variant``), weights or not."""
    from qcnode.model.network import parse_variant  # torch: only on this error path

    try:
        parse_variant(name)
    except ValueError:
        return False
    return True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry(name: str, raw: Mapping[str, Any]) -> ModelEntry:
    try:
        entry = ModelEntry(
            name=name,
            file=str(raw["file"]),
            sha256=str(raw["sha256"]).lower(),
            variant=str(raw["variant"]),
            version=str(raw["version"]),
            input_size=int(raw["input_size"]),
            spacing_mm=float(raw["spacing_mm"]),
            structures=tuple(raw["structures"]),
            views=tuple(raw["views"]),
            reference_lung_width_mm={
                str(k): float(v) for k, v in raw["reference_lung_width_mm"].items()
            },
            recipe=dict(raw.get("recipe", {})),
            data_version=str(raw.get("data_version", "")),
            code_version=str(raw.get("code_version", "")),
            metrics=dict(raw.get("metrics", {})),
            mask_bias={str(k): float(v) for k, v in raw.get("mask_bias", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"registry entry {name!r} is incomplete or invalid: {exc}") from exc
    if entry.structures not in MODEL_CHANNELS:
        raise ModelError(f"model {name!r} was trained for other structures: {entry.structures}")
    unknown = sorted(set(entry.mask_bias) - set(entry.structures))
    if unknown:
        raise ModelError(f"model {name!r}: mask_bias names channels it lacks: {unknown}")
    return entry


@dataclass(frozen=True)
class Registry:
    default: str
    entries: Mapping[str, ModelEntry]
    weights_dir: Path = WEIGHTS_DIR
    ensembles: Mapping[str, EnsembleEntry] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Every loadable name: weights entries and ensembles."""
        return sorted({*self.entries, *self.ensembles})

    def _unknown(self, key: str) -> UnknownModel:
        """The error for a name that is neither weights nor an ensemble. A bare architecture
        name (``qcnet_d10_w3``) gets its own message listing that variant's weights: several
        weights files share a variant, and picking one for the user would be a silent guess
        (the name once meant session-4 weights)."""
        default = f"; default: {self.default}" if self.default else ""
        of_variant = _natural(n for n, e in self.entries.items() if e.variant == key)
        if of_variant:
            return UnknownModel(
                f"unknown model {key!r}: that is an architecture (variant) name, not registered "
                f"weights; registered weights of {key}: {', '.join(of_variant)}{default}"
            )
        known = ", ".join(_natural(self.names())) or "none"
        if _is_variant(key):
            return UnknownModel(
                f"unknown model {key!r}: that is an architecture (variant) name with no "
                f"registered weights; registered models: {known}{default}"
            )
        return UnknownModel(f"unknown model {key!r}; registered models: {known}{default}")

    def resolve(self, name: str | None = None) -> str:
        """``name`` (the default when None) if it is registered, weights or ensemble;
        UnknownModel otherwise. Lets a command refuse a wrong name before slow work."""
        key = name or self.default
        if key not in self.entries and key not in self.ensembles:
            raise self._unknown(key)
        return key

    def is_ensemble(self, name: str | None = None) -> bool:
        return (name or self.default) in self.ensembles

    def get(self, name: str | None = None) -> ModelEntry:
        """The weights entry ``name`` (the default when None); ModelError for an unknown
        name or an ensemble (see ``ensemble`` and ``members``)."""
        key = name or self.default
        if key in self.ensembles:
            raise ModelError(f"model {key!r} is an ensemble, not a weights file")
        if key not in self.entries:
            raise self._unknown(key)
        return self.entries[key]

    def ensemble(self, name: str | None = None) -> EnsembleEntry:
        key = name or self.default
        if key not in self.ensembles:
            if key in self.entries:
                raise ModelError(f"model {key!r} is a weights file, not an ensemble")
            raise self._unknown(key)
        return self.ensembles[key]

    def members(self, ensemble: EnsembleEntry) -> tuple[ModelEntry, ...]:
        """The member entries, checked: each a registered weights entry (not an ensemble),
        none repeated, all with the same input and outputs (``check_compatible``)."""
        if not ensemble.members:
            raise ModelError(f"ensemble {ensemble.name!r} has no members")
        seen: set[str] = set()
        out = []
        for m in ensemble.members:
            if m in self.ensembles:
                raise ModelError(
                    f"ensemble {ensemble.name!r}: member {m!r} is itself an ensemble "
                    "(nested ensembles are not supported)"
                )
            if m not in self.entries:
                known = ", ".join(sorted(self.entries)) or "none"
                raise ModelError(
                    f"ensemble {ensemble.name!r}: member {m!r} is not a registered model "
                    f"(weights entries: {known})"
                )
            if m in seen:
                raise ModelError(f"ensemble {ensemble.name!r} lists member {m!r} twice")
            seen.add(m)
            out.append(self.entries[m])
        check_compatible(ensemble.name, out)
        return tuple(out)

    def verified_path(self, entry: ModelEntry) -> Path:
        """The weights file, after checking that it exists and matches its sha256."""
        path = entry.path(self.weights_dir)
        if not path.is_file():
            raise ModelError(f"weights file for model {entry.name!r} is missing: {path}")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ModelError(
                f"weights file {path} does not match the registry (sha256 {actual[:12]}… "
                f"expected {entry.sha256[:12]}…); refusing to load it"
            )
        return path

    def with_entry(self, entry: ModelEntry, *, make_default: bool = False) -> Registry:
        if entry.name in self.ensembles:
            raise ModelError(f"{entry.name!r} is a registered ensemble: pick another name")
        entries = {**self.entries, entry.name: entry}
        return Registry(
            default=entry.name if make_default or not self.default else self.default,
            entries=entries,
            weights_dir=self.weights_dir,
            ensembles=self.ensembles,
        )

    def with_ensemble(self, ensemble: EnsembleEntry, *, make_default: bool = False) -> Registry:
        if ensemble.name in self.entries:
            raise ModelError(f"{ensemble.name!r} is a registered weights entry: pick another name")
        return Registry(
            default=ensemble.name if make_default or not self.default else self.default,
            entries=self.entries,
            weights_dir=self.weights_dir,
            ensembles={**self.ensembles, ensemble.name: ensemble},
        )

    def save(self, path: Path | None = None) -> None:
        doc: dict[str, Any] = {
            "default": self.default,
            "models": {k: v.to_toml() for k, v in sorted(self.entries.items())},
        }
        if self.ensembles:
            doc["ensembles"] = {k: v.to_toml() for k, v in sorted(self.ensembles.items())}
        target = path or self.weights_dir / REGISTRY_FILE.name
        target.write_text(
            "# Weights registry: written by `qcnode train`, checked on every load.\n"
            + tomli_w.dumps(doc),
            encoding="utf-8",
        )


def _ensemble(name: str, raw: Mapping[str, Any]) -> EnsembleEntry:
    members = raw.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ModelError(f"ensemble {name!r} needs members = [registry names]")
    return EnsembleEntry(
        name=name,
        members=tuple(members),
        version=str(raw.get("version", "1.0.0")),
        note=str(raw.get("note", "")),
        metrics=dict(raw.get("metrics", {})),
    )


def load_registry(path: Path | None = None) -> Registry:
    """Read the registry; ``path`` defaults to the packaged one next to the weights."""
    path = path or REGISTRY_FILE
    if not path.is_file():
        return Registry(default="", entries={}, weights_dir=path.parent)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"cannot read the weights registry {path}: {exc}") from exc
    entries = {name: _entry(name, spec) for name, spec in raw.get("models", {}).items()}
    ensembles = {name: _ensemble(name, spec) for name, spec in raw.get("ensembles", {}).items()}
    both = sorted(set(entries) & set(ensembles))
    if both:
        raise ModelError(f"registry {path}: names both a model and an ensemble: {both}")
    return Registry(
        default=str(raw.get("default", "")),
        entries=entries,
        weights_dir=path.parent,
        ensembles=ensembles,
    )
