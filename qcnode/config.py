"""Settings: built once in cli.py (flags > QCNODE_* env > toml > defaults), frozen, passed down."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcnode.errors import ConfigError


@dataclass(frozen=True)
class Destination:
    """A C-STORE destination, written ``AE@HOST:PORT`` on the command line."""

    ae_title: str
    host: str
    port: int
    objects: tuple[str, ...] = ("sr", "sc")  # any of sr, sc, gsps, kos
    # DICOM TLS to this destination: a CA file turns it on (the PACS certificate must be
    # signed by it); our certificate and key make it mutual
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @classmethod
    def parse(cls, text: str) -> Destination:
        try:
            ae, rest = text.split("@", 1)
            host, port = rest.rsplit(":", 1)
            return cls(ae_title=ae, host=host, port=int(port))
        except ValueError as exc:
            raise ConfigError(f"destination {text!r} is not AE@HOST:PORT") from exc


@dataclass(frozen=True)
class Settings:
    # node
    data_dir: Path = Path("qcnode-data")
    ae_title: str = "QCNODE"
    bind_address: str = "0.0.0.0"
    port: int = 11112
    destinations: tuple[Destination, ...] = ()
    allowed_calling_aes: tuple[str, ...] = ()  # empty: accept any calling AE
    max_associations: int = 16
    max_associations_per_ae: int = 8
    # serve: processes receiving on the port (SO_REUSEPORT); the limits above are per process
    ingest_processes: int = 1
    max_dataset_bytes: int = 512 * 1024 * 1024
    max_pixels: int = 8000 * 8000  # Rows x Columns of a CR/DX image (largest detectors ~4300²)
    min_free_disk_bytes: int = 1024 * 1024 * 1024
    non_chest: str = "keep"  # keep (marked not_applicable) | refuse
    database_url: str = ""  # empty: sqlite file under data_dir
    # DICOM TLS for ingest: our certificate and key (PEM) turn it on; a CA file makes it
    # mutual (peers must present a certificate it signed)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    # worker
    workers: int = 1
    # serve: run the workers in one child process (own GIL) instead of threads beside ingest
    worker_process: bool = True
    batch_size: int = 8
    batch_max_wait_ms: int = 50
    lease_seconds: int = 120
    # a job whose worker died this many times (a poison image) gets an error result
    job_max_attempts: int = 5
    device: str = "auto"  # auto | cpu | cuda
    model: str = ""  # empty: the registry's default
    # sender
    send_max_attempts: int = 10
    send_backoff_seconds: float = 2.0
    # results
    language: str = "en"  # en | zh
    rules_file: Path | None = None  # None: the packaged etc/rules.toml
    kos_title: str = "quality_issue"  # quality_issue (113010) | rejected (113001: on request only)
    kos_when: str = "fail"  # which verdicts get a KOS: fail | warn | always
    uid_root: str = ""  # organisation UID root for result UIDs; empty: 2.25.<name-based UUID>
    institution_name: str = ""  # written into result objects
    sc_max_size: int = 1024  # long side (px) of the image in the overlay Secondary Capture
    sc_compression: str = "none"  # overlay SC pixels: none | rle (lossless) | jpeg (~10x smaller)
    # web
    web_port: int = 8080
    web_bind: str = "127.0.0.1"
    web_token: str = ""  # bearer token (or basic-auth password with any user name)
    web_user: str = ""  # one basic-auth user; set together with web_password
    web_password: str = ""
    verbose: bool = False
    # audit trail to syslog, IHE ATNA style (udp://host:514 or tcp://host:6514); empty: off
    audit_syslog: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'qcnode.sqlite'}"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _destination(table: Mapping[str, Any]) -> Destination:
    """A ``[[destinations]]`` table: ae_title, host, port and optionally objects."""
    values = dict(table)
    if "objects" in values:
        values["objects"] = tuple(values["objects"])
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if values.get(key) not in (None, ""):
            values[key] = Path(values[key])
    values["port"] = int(values.get("port", 104))
    return Destination(**values)


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if name == "destinations":
            items = value.split(",") if isinstance(value, str) else value
            return tuple(
                Destination.parse(v) if isinstance(v, str) else _destination(v) for v in items
            )
        if name == "allowed_calling_aes":
            return tuple(value.split(",")) if isinstance(value, str) else tuple(value)
        if name in ("data_dir", "rules_file", "tls_cert_file", "tls_key_file", "tls_ca_file"):
            return None if value in (None, "") else Path(value)
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: cannot use {value!r}") from exc
    return value


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults < toml < QCNODE_* environment < explicit overrides (the flags)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {config_file}: {exc}") from exc
        for section in raw.values() if all(isinstance(v, dict) for v in raw.values()) else [raw]:
            values.update(section)
    env = os.environ if environ is None else environ
    for name in _FIELDS:
        key = f"QCNODE_{name.upper()}"
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    return Settings(**{k: _coerce(k, v) for k, v in values.items()})
