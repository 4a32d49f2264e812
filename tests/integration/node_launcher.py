"""Run a node like ``qcnode serve --config FILE`` (or ``qcnode worker`` with a second
argument ``worker``) but with the model faked (phantom masks).

For the delivery tests (crash, PACS down), whose subject is ingest → outbox → PACS, not
the model: a real process that can be SIGKILLed, with a model that is instant and always
answers "frontal chest" so that every image gets an SR and an SC.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from qcnode.config import load_settings
from qcnode.node import EngineAnalyzer, Node, _quiet_libraries, _run_until_signal
from qcnode.records import View
from qcnode.testing import FakePredictor, frontal_phantom


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(Path(sys.argv[1]))
    _quiet_libraries(settings)
    predictor = FakePredictor(source=lambda img: (View.FRONTAL, frontal_phantom(img.pixels.shape)))
    node = Node(
        settings=settings,
        analyzer_factory=lambda: EngineAnalyzer(predictor=predictor, settings=settings),
    )
    workers_only = len(sys.argv) > 2 and sys.argv[2] == "worker"
    node.start(ingest=not workers_only, senders=not workers_only)
    return _run_until_signal(node)


if __name__ == "__main__":
    raise SystemExit(main())
