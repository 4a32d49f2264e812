#!/usr/bin/env bash
# Evaluate weights files (e.g. a GPU grid run's) on this machine: every Nth image of the
# synthetic evaluation set, the real radiographs, the held-out negatives. One JSON each.
#   [EVAL_SET=data/synth/eval-v2] scripts/eval_weights.sh OUTDIR STRIDE WEIGHTS.pt...
set -euo pipefail
out=$1 stride=$2
shift 2
mkdir -p "$out"
for w in "$@"; do
  name=$(basename "$w" .pt)
  .venv/bin/python -m qcnode.model.report --weights "$w" --set "${EVAL_SET:-data/synth/eval-v1}" \
    --stride "$stride" --json-out "$out/$name.json" > /dev/null 2> "$out/$name.log"
  .venv/bin/python - "$out/$name.json" <<'PY'
import json, sys
from qcnode.model.report import headline
r = json.load(open(sys.argv[1]))
h = headline(r)
d = h.get("synthetic_dice", {})
keys = ["frontal/lung_right", "frontal/lung_left", "frontal/heart", "frontal/clavicle_right",
        "frontal/clavicle_left", "frontal/scapula_right", "frontal/scapula_left",
        "lateral/lung_right", "lateral/lung_left", "frontal/lungs_visible_union"]
print(sys.argv[1], " ".join(f"{k.split('/')[1][:10]}={d.get(k, float('nan')):.3f}" for k in keys),
      f"view={h.get('synthetic_view_accuracy')}", f"real={h.get('real_lung_dice_mean')}",
      f"real_vis={h.get('real_visible_lung_dice_mean')}", f"realview={h.get('real_view_correct')}",
      f"neg={h.get('held_out_negatives_other')}", flush=True)
PY
done
