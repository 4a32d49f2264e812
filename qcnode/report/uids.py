"""Deterministic UIDs for result objects.

A re-run or a retry of the same source image with the same model must produce the same
SOP Instance UIDs, so that a PACS replaces the earlier result instead of piling up
duplicates. UIDs are derived from a name (ISO/IEC 9834-8 name-based UUID under the
``2.25`` arc), or under an organisation root when one is configured.
"""

from __future__ import annotations

import hashlib
import uuid

from pydicom.uid import UID

# Fixed namespace for qcnode's name-based UUIDs (itself a uuid5 of the project URL-ish name,
# written out so that it never changes by accident).
_NAMESPACE = uuid.UUID("5b0c1f5e-8d2a-5d43-9f0e-6a3c2e7b9d11")

OBJECT_KINDS: tuple[str, ...] = ("sr", "sc", "gsps", "kos")


def derived_uid(*parts: str, root: str | None = None) -> UID:
    """A UID that depends only on ``parts`` (and ``root``).

    With ``root`` (an organisation UID root, e.g. ``"1.2.3.4."``) the suffix is a decimal
    hash that fills the UID up to 64 characters; without it the UID is ``2.25.<uuid5>``.
    """
    key = "\x1f".join(parts)  # unit separator: ("a", "bc") and ("ab", "c") differ
    if root is None:
        return UID(f"2.25.{uuid.uuid5(_NAMESPACE, key).int}")
    if not root.endswith("."):
        root += "."
    room = 64 - len(root)
    if room < 10:
        raise ValueError(f"UID root {root!r} leaves too little room for a unique suffix")
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest(), "big")
    suffix = str(digest)[:room].lstrip("0") or "0"
    uid = UID(root + suffix)
    if not uid.is_valid:
        raise ValueError(f"UID root {root!r} does not give valid UIDs")
    return uid


def _model_key(model_version: str | None) -> str:
    return model_version or "no-model"


def instance_uid(
    source_sop_instance_uid: str, model_version: str | None, kind: str, *, root: str | None = None
) -> UID:
    """SOP Instance UID of the ``kind`` result (sr, sc, gsps, kos) for one source image."""
    return derived_uid(
        "instance", source_sop_instance_uid, _model_key(model_version), kind, root=root
    )


def series_uid(
    source_series_instance_uid: str,
    model_version: str | None,
    kind: str,
    *,
    root: str | None = None,
) -> UID:
    """Series Instance UID of the ``kind`` results for one source series.

    Results of all images of a source series land in one result series per kind.
    """
    return derived_uid(
        "series", source_series_instance_uid, _model_key(model_version), kind, root=root
    )


def item_uid(
    source_sop_instance_uid: str, model_version: str | None, *labels: str, root: str | None = None
) -> UID:
    """UID of an item inside a result (tracking UID of a measurement group, an observer)."""
    return derived_uid(
        "item", source_sop_instance_uid, _model_key(model_version), *labels, root=root
    )


def source_stand_in_uid(source_sop_instance_uid: str, kind: str, *, root: str | None = None) -> UID:
    """Stands in for a source's missing Study or Series Instance UID (``kind``: study,
    series): derived from its SOP Instance UID, so every re-run agrees."""
    return derived_uid("source", kind, source_sop_instance_uid, root=root)
