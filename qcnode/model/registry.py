"""The weights registry: which weights file is which model, checked before it is used.

``qcnode/model/weights/registry.toml`` has a ``default`` name and one ``[models.NAME]`` table
per weights file: file, sha256, variant, input size and spacing, structure and view lists,
training recipe, data and code version, metrics. Loading is from local files only; a missing
file, a checksum mismatch or an unknown name is a ModelError (the node refuses to start),
never a silent fallback to random weights.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from qcnode.errors import ModelError
from qcnode.records import MODEL_CHANNELS

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
        }


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
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"registry entry {name!r} is incomplete or invalid: {exc}") from exc
    if entry.structures not in MODEL_CHANNELS:
        raise ModelError(f"model {name!r} was trained for other structures: {entry.structures}")
    return entry


@dataclass(frozen=True)
class Registry:
    default: str
    entries: Mapping[str, ModelEntry]
    weights_dir: Path = WEIGHTS_DIR

    def get(self, name: str | None = None) -> ModelEntry:
        key = name or self.default
        if key not in self.entries:
            known = ", ".join(sorted(self.entries)) or "none"
            raise ModelError(f"unknown model {key!r}; registered models: {known}")
        return self.entries[key]

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
        entries = {**self.entries, entry.name: entry}
        return Registry(
            default=entry.name if make_default or not self.default else self.default,
            entries=entries,
            weights_dir=self.weights_dir,
        )

    def save(self, path: Path | None = None) -> None:
        doc = {
            "default": self.default,
            "models": {k: v.to_toml() for k, v in sorted(self.entries.items())},
        }
        target = path or self.weights_dir / REGISTRY_FILE.name
        target.write_text(
            "# Weights registry: written by `qcnode train`, checked on every load.\n"
            + tomli_w.dumps(doc),
            encoding="utf-8",
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
    return Registry(default=str(raw.get("default", "")), entries=entries, weights_dir=path.parent)
