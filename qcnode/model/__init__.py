"""The QC network: variants, preprocessing, weights registry, inference, training.

Entry point for the rest of qcnode: ``load_predictor`` (a ``qcnode.records.Predictor``).
Torch is imported only when this package is, so light commands stay light.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting are ruinous on a shared CPU (measured here with 2
# threads under load: 3.6 s vs 0.77 s per training step). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qcnode.model.infer import TorchPredictor, load_predictor

__all__ = ["TorchPredictor", "load_predictor"]
