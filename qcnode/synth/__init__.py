"""qcnode synth: synthetic chest radiographs with exact ground truth (docs/SYNTH.md)."""

import os

# Idle OpenMP threads must not spin on the shared 2-core machine (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
