"""The QC network: variants, preprocessing, weights registry, inference, training.

Entry point for the rest of qcnode: ``load_predictor`` (a ``qcnode.records.Predictor``).
Torch is imported only when this package is, so light commands stay light.
"""

from __future__ import annotations

from qcnode.model.infer import TorchPredictor, load_predictor

__all__ = ["TorchPredictor", "load_predictor"]
