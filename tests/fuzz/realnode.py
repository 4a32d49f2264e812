"""The C-STORE fuzz target over a real network to a real node process.

The node is a separate process (tests/integration/node_launcher.py: ``qcnode serve`` with
the fake model, so the real ingest, queue, decoder, rules, report builder and sender run)
delivering to Orthanc; the hostile inputs come from a pynetdicom SCU in this process over
TCP, bytes unchanged (chunked send), one association re-opened when dropped.

A crash (NodeFailure) is: a status that is not one of ingest's named ones, no response or
an aborted association, the node process gone (it is restarted and the run goes on), an
exception in the C-STORE handler (pynetdicom's "Exception in handler" line), or an ERROR
line from qcnode in the node's log (a worker that cannot build result objects, a rule that
failed, a sender loop error, ...) other than ingest's designed refusal of a header it cannot
use (answered 0xC000). Codecs' own ERROR lines are not counted (the decoder turns those
failures into error results), nor pynetdicom's timeout lines (their effects show in the
statuses and in the delivery checks). At the end
(``finish``): every acknowledged instance kept and QC'd, every evaluated one with its SR
and SC at the PACS, nothing missing, unexpected or dead-lettered
(tests/reliability/support.py).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config
from pynetdicom.association import Association

from qcnode.ingest import (
    STORAGE_SOP_CLASSES,
    SUCCESS,
    TRANSFER_SYNTAXES,
    VERIFICATION,
)
from qcnode.netio import assoc_socket, guard_reactor_polls, set_nodelay
from tests.conftest import free_port
from tests.fuzz.cstore import NAMED_STATUSES, NodeFailure
from tests.fuzz.dicom_inputs import with_new_uid
from tests.fuzz.ingest_target import _file_meta_uid
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_delivery import node_settings
from tests.reliability.support import NOTHING_LOST, CountingOrthanc, delivery_figures

_ERROR_LINE = re.compile(r"^\S+ \S+ ERROR (\S+): (.*)$", re.MULTILINE)
HANDLED = ("unusable header from",)  # ingest's designed refusal (0xC000, audited)


class RealNodeTarget:
    """Orthanc + a fake-model node process on free ports, and an SCU to the node."""

    def __init__(self, root: Path) -> None:
        (root / "orthanc").mkdir(parents=True, exist_ok=True)
        self.pacs = CountingOrthanc(
            ae_title="ORTHANC",
            dicom_port=free_port(),
            http_port=free_port(),
            root=root / "orthanc",
        )
        self.pacs.start()
        settings = {**node_settings(root, self.pacs), "max_dataset_bytes": 8 * 1024 * 1024}
        self.node = NodeProcess(root / "n", fake_model=True, **settings)
        self.node.start()
        guard_reactor_polls()  # as the sender (qcnode.netio)
        self.ae = AE(ae_title="FUZZSCU")
        self.ae.add_requested_context(VERIFICATION)
        for uid in STORAGE_SOP_CLASSES:
            for syntax in TRANSFER_SYNTAXES:
                self.ae.add_requested_context(uid, syntax)
        self.ae.dimse_timeout = 120
        self.assoc: Association | None = None
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.acknowledged: list[str] = []
        self.restarts = 0
        self._log_seen = 0
        self.scratch = root / "inputs"
        self.scratch.mkdir(parents=True, exist_ok=True)

    def _association(self) -> Association:
        if self.assoc is None or not self.assoc.is_established:
            assoc = self.ae.associate("127.0.0.1", self.node.port, ae_title="QCNODE")
            if not assoc.is_established:
                raise NodeFailure("the node refused or did not answer an association")
            set_nodelay(assoc_socket(assoc))
            self.assoc = assoc
        return self.assoc

    def _alive(self) -> None:
        proc = self.node.proc
        if proc is not None and proc.poll() is not None:
            code = proc.returncode
            self.node.proc = None
            self.assoc = None
            self.restarts += 1
            self.node.start()
            raise NodeFailure(f"the node process died (exit {code}); restarted")

    def send(self, data: bytes) -> int | None:
        """C-STORE one input (None: the SCU could not send it); NodeFailure on a crash."""
        self._alive()
        data, uid = with_new_uid(data)
        path = self.scratch / "input.dcm"
        path.write_bytes(data)
        if uid.encode() not in data:  # a mutation hit the UID: the file meta's is announced
            uid = _file_meta_uid(path)
        assoc = self._association()
        chunked = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            status = assoc.send_c_store(path)
        except (AttributeError, ValueError, KeyError, EOFError, OSError):
            return None
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked
        self.sent += 1
        if "Status" not in status:
            self.assoc = None
            self._alive()
            raise NodeFailure("no C-STORE response (association aborted or timed out)")
        code = int(status.Status)
        self.statuses[code] += 1
        if code not in NAMED_STATUSES:
            raise NodeFailure(f"unexpected C-STORE status 0x{code:04X}")
        if code == SUCCESS:
            self.acknowledged.append(uid)
        return code

    def log_errors(self) -> list[NodeFailure]:
        """ERROR lines the node logged since the last call, as failures."""
        text = self.node.log()
        new, self._log_seen = text[self._log_seen :], len(text)
        out = []
        lines = _ERROR_LINE.findall(new)
        for i, (name, message) in enumerate(lines):
            if name.startswith("pynetdicom") and message.startswith("Exception in handler"):
                cause = lines[i + 1][1] if i + 1 < len(lines) else ""  # its own next line
                out.append(NodeFailure(f"{name}: handler raised: {cause}"[:300]))
            elif name.startswith("qcnode") and not message.startswith(HANDLED):
                out.append(NodeFailure(f"{name}: {re.sub(r'#[0-9]+', '#N', message)}"[:300]))
            # other lines: codecs' own refusals (the decoder turns them into error results);
            # pynetdicom's timeouts, whose effects the statuses and the delivery checks see
        return out

    def finish(self, timeout: float = 1800.0) -> tuple[dict[str, Any], list[NodeFailure]]:
        """Wait for QC and delivery of everything acknowledged; the figures and failures."""
        self._alive()
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        figures = delivery_figures(self.node, self.pacs, sorted(set(self.acknowledged)), timeout)
        failures = self.log_errors()
        for key, want in NOTHING_LOST.items():
            if figures.get(key) != want:
                failures.append(NodeFailure(f"delivery: {key} = {figures.get(key)}"))
        return figures, failures

    def close(self) -> None:
        self.node.stop()
        self.pacs.stop()
