"""A qcnode node as a real process (``qcnode serve`` or the fake-model launcher)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from qcnode.config import load_settings
from qcnode.db import Instance, Result, ResultObject, make_engine, make_sessions
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class NodeProcess:
    """Start/kill a node process on a config file; read its database afterwards."""

    def __init__(
        self,
        root: Path,
        *,
        fake_model: bool,
        role: str = "serve",
        qc_process: bool = False,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> None:
        """``qc_process``: with the fake model, run the workers in a QC child process as
        ``qcnode serve`` does by default (else threads in the node's process)."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "qcnode.toml"
        self.config.write_text(
            "[node]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items())
        )
        self.settings = load_settings(self.config)
        self.fake_model = fake_model
        self.role = role
        self.qc_process = qc_process
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def port(self) -> int:
        return self.settings.port

    def start(self, timeout: float = 120.0) -> None:
        self.starts += 1
        if self.fake_model:
            cmd = [sys.executable, str(ROOT / "tests" / "integration" / "node_launcher.py")]
            cmd += [str(self.config), self.role, "process" if self.qc_process else "threads"]
        else:
            cmd = [sys.executable, "-m", "qcnode.cli", self.role, "--config", str(self.config)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        with (self.root / f"node{self.starts}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited {self.proc.returncode}: {self.log()[-3000:]}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        if self.role == "serve":
            wait_for(listening, timeout, "the node to listen")

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("node*.log")))

    def kill(self, *, tree: bool = False) -> None:
        """SIGKILL the node's process; with ``tree`` its child processes too, at once (a
        power cut, a container stop): they are stopped first so that none sees another
        die."""
        if self.proc is not None:
            pids = [self.proc.pid, *(descendants(self.proc.pid) if tree else [])]
            for sig in (signal.SIGSTOP, signal.SIGKILL) if tree else (signal.SIGKILL,):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            self.proc.wait(timeout=30)
            self.proc = None
            for pid in pids[1:]:
                wait_for(lambda p=pid: not _exists(p), 30, "the node's children to die")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def query(self, stmt: Any) -> list[Any]:
        engine = make_engine(self.settings, readonly=True)
        try:
            with make_sessions(engine)() as s:
                return list(s.execute(stmt).all())
        finally:
            engine.dispose()

    def results(self) -> dict[str, str]:
        """SOP Instance UID → verdict, for every instance with a result."""
        rows = self.query(
            select(Instance.sop_instance_uid, Result.verdict).join(
                Result, Result.instance_id == Instance.id
            )
        )
        return {uid: verdict for uid, verdict in rows}

    def objects(self) -> dict[str, list[tuple[str, str]]]:
        """Source SOP Instance UID → [(kind, result object UID)]."""
        rows = self.query(
            select(Instance.sop_instance_uid, ResultObject.kind, ResultObject.sop_instance_uid)
            .join(Result, Result.instance_id == Instance.id)
            .join(ResultObject, ResultObject.result_id == Result.id)
        )
        out: dict[str, list[tuple[str, str]]] = {}
        for src, kind, uid in rows:
            out.setdefault(src, []).append((kind, uid))
        return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), children before grandchildren."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(c) for c in (task / "children").read_text().split()]
                out.extend(kids)
                todo.extend(kids)
    return out


def _exists(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (reaped or not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
