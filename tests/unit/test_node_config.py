"""etc/qcnode.toml documents every setting with its default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from qcnode.config import Destination, Settings, load_settings

ETC = Path(__file__).resolve().parents[2] / "etc" / "qcnode.toml"


def test_every_setting_is_documented() -> None:
    text = ETC.read_text(encoding="utf-8")
    named = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    fields = {f.name for f in dataclasses.fields(Settings)} - {"extra"}
    assert fields - named == set()


def test_shipped_file_gives_the_defaults() -> None:
    assert load_settings(ETC, environ={}) == Settings()


def test_destination_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "q.toml"
    cfg.write_text(
        '[sender]\n[[sender.destinations]]\nae_title = "PACS"\nhost = "pacs"\nport = 104\n'
        'objects = ["sr", "kos"]\n'
    )
    (dest,) = load_settings(cfg, environ={}).destinations
    assert dest == Destination(ae_title="PACS", host="pacs", port=104, objects=("sr", "kos"))


def test_docker_files_use_real_settings() -> None:
    """Every QCNODE_* variable in docker/ names a setting, and the image's command works."""
    root = ETC.parents[1]
    text = (root / "docker" / "compose.yaml").read_text() + (
        root / "docker" / "Dockerfile"
    ).read_text()
    names = {n.lower() for n in re.findall(r"QCNODE_([A-Z_]+)", text)}
    assert names and names <= {f.name for f in dataclasses.fields(Settings)}
    assert 'CMD ["serve", "--config", "/opt/qcnode/etc/qcnode.toml"]' in text


def test_ingest_and_engine_agree_on_chest_headers() -> None:
    from qcnode.engine import chest_header
    from qcnode.ingestheader import is_chest
    from qcnode.records import ImageMeta

    cr = "1.2.840.10008.5.1.4.1.1.1"
    for part in ("", "CHEST", "chest pa", "THORAX", "TORAX", "BRUST", "KNEE", "HAND", "ABDOMEN"):
        meta = ImageMeta(sop_instance_uid="1", sop_class_uid=cr, modality="CR", rows=1, columns=1,
                         photometric="MONOCHROME2", body_part=part.upper())  # fmt: skip
        assert is_chest(cr, part) == chest_header(meta), part
    assert not is_chest("1.2.840.10008.5.1.4.1.1.7", "CHEST")  # Secondary Capture


def test_destination_tls_paths(tmp_path: Path) -> None:
    cfg = tmp_path / "q.toml"
    cfg.write_text(
        '[[destinations]]\nae_title = "PACS"\nhost = "pacs"\nport = 2762\n'
        'tls_ca_file = "/etc/ca.crt"\n'
    )
    (dest,) = load_settings(cfg, environ={}).destinations
    assert dest.tls_ca_file == Path("/etc/ca.crt") and dest.tls_cert_file is None
