"""``qcnode serve --ingest-processes N`` as users type it: N processes listen on the port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port, wait_for
from tests.integration.test_ingest_processes import listeners

ROOT = Path(__file__).resolve().parents[2]


def test_ingest_processes_flag_starts_that_many_listeners(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "qcnode.toml"
    config.write_text(  # no workers: nothing to load, this is about receiving
        f'[node]\ndata_dir = "{tmp_path / "data"}"\nbind_address = "127.0.0.1"\n'
        f"port = {port}\nweb_port = 0\nworkers = 0\ningest_processes = 1\n"
    )
    cmd = [sys.executable, "-m", "qcnode.cli", "serve", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QCNODE_INGEST_PROCESSES", None)
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(
            [*cmd, "--ingest-processes", "2"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_for(lambda: len(set(listeners(port))) == 2, 120, "two processes listening")
        assert serve.pid in listeners(port)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
