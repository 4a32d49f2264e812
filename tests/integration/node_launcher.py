"""Run a node like ``qcnode serve --config FILE`` (or ``qcnode worker`` with a second
argument ``worker``) but with the model faked (phantom masks).

For the delivery tests (crash, PACS down), whose subject is ingest → outbox → PACS, not
the model: a real process that can be SIGKILLed, with a model that is instant and always
answers "frontal chest" so that every image gets an SR and an SC.

A third argument ``process`` runs the workers as ``qcnode serve`` does by default: in a
QC child process (qcnode.qcprocess) that serve watches; without it they are threads in
this process. With the environment variable ``QCNODE_TEST_POISON_UID`` set, the fake
model SIGKILLs its own process when it meets that SOP Instance UID (a poison image);
``QCNODE_TEST_MODEL_SECONDS`` makes it take that long per image (a job held long enough
to be interrupted).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from qcnode.config import Settings, load_settings
from qcnode.node import EngineAnalyzer, Node, _quiet_libraries, _run_until_signal
from qcnode.records import BoolMask, DecodedImage, View
from qcnode.testing import FakePredictor, frontal_phantom
from qcnode.worker import Analyzer


def _phantom(image: DecodedImage) -> tuple[View, dict[str, BoolMask]]:
    if image.meta.sop_instance_uid == os.environ.get("QCNODE_TEST_POISON_UID"):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(os.environ.get("QCNODE_TEST_MODEL_SECONDS", "0")))
    return View.FRONTAL, frontal_phantom(image.pixels.shape)


def fake_analyzers(settings: Settings) -> Callable[[], Analyzer]:
    """The fake model's analyzer factory (module level: the QC child imports it by name)."""
    predictor = FakePredictor(source=_phantom)
    return lambda: EngineAnalyzer(predictor=predictor, settings=settings)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(Path(sys.argv[1]))
    _quiet_libraries(settings)
    workers_only = len(sys.argv) > 2 and sys.argv[2] == "worker"
    if len(sys.argv) > 3 and sys.argv[3] == "process":
        from qcnode import qcprocess
        from tests.integration.node_launcher import fake_analyzers as by_name

        if workers_only:
            return qcprocess.run_worker_with_qc_process(settings, analyzers=by_name)
        return qcprocess.serve_with_qc_process(settings, analyzers=by_name)
    node = Node(settings=settings, analyzer_factory=fake_analyzers(settings))
    node.start(ingest=not workers_only, senders=not workers_only)
    return _run_until_signal(node)


if __name__ == "__main__":
    raise SystemExit(main())
