#!/usr/bin/env bash
# One call on a lent GPU host (the device tool): train the variant grid on the packed
# synthetic set (qcnode.model.grid), then time every variant batched on the GPU.
# Needs, carried with the repo: .gpu/packs (python -m qcnode.model.grid pack ...; PACKS=DIR
# for another folder) and .whl (wheels the host lacks: tomli_w). Results under $OUT:
# weights.tgz, train.log, bench.json.
#   scripts/gpu_grid.sh MINUTES [extra grid-train arguments...]
# With --variant among the arguments only those are trained (else the six variants from
# scratch). With --augment-on device, a run that fails in its first two minutes is rerun
# with worker augmentation in the time left. GRID_BENCH=0 skips the GPU timing.
set -uo pipefail
minutes=${1:-6}
shift || true
out=${OUT:-/tmp/qcnode-gpu-out}
packs=${PACKS:-.gpu/packs}
mkdir -p "$out" /tmp/grid
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi -L
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))"
nproc
# Snapshots (written atomically by the trainer) reach $OUT even if the call runs out of time.
( while sleep 40; do tar czf "$out/w.tmp" -C /tmp/grid . 2>/dev/null && mv "$out/w.tmp" "$out/weights.tgz"; done ) &
saver=$!
variants=()
if [[ " $* " != *" --variant "* ]]; then
  for v in qcnet_d10_w1 qcnet_d10_w3 qcnet_d15_w1 qcnet_d15_w3 qcnet_d20_w1 qcnet_d20_w3; do
    variants+=(--variant "$v")
  done
fi
started=$SECONDS
python3 -m qcnode.model.grid train --packs "$packs" --out /tmp/grid --device cuda \
  --minutes "$minutes" "${variants[@]}" "$@" 2>&1 | tee "$out/train.log"
status=${PIPESTATUS[0]}
if [[ $status -ne 0 && " $* " == *" device "* && $((SECONDS - started)) -lt 120 ]]; then
  left=$(python3 -c "print(round($minutes - ($SECONDS - $started) / 60 - 0.3, 2))")
  echo "device augmentation failed (status $status): rerun with workers for $left min" | tee -a "$out/train.log"
  args=()
  for a in "$@"; do [[ $a == device ]] && a=workers; args+=("$a"); done
  python3 -m qcnode.model.grid train --packs "$packs" --out /tmp/grid --device cuda \
    --minutes "$left" "${variants[@]}" "${args[@]}" 2>&1 | tee -a "$out/train.log"
  status=${PIPESTATUS[0]}
fi
kill "$saver" 2>/dev/null
tar czf "$out/weights.tgz" -C /tmp/grid .
[[ ${GRID_BENCH:-1} == 0 ]] && exit "$status"
python3 - "$out/bench.json" <<'PY'
import json, sys
import torch
from qcnode.bench import bench_variants, machine
from qcnode.model.network import variant_names
rows = []
for precision in ("bf16", "fp32"):
    rows += bench_variants(variant_names(), threads=[1], repeats=20, batch=256, device="cuda",
                           precision=precision)
doc = {"machine": machine(), "gpu": torch.cuda.get_device_name(0), "model": rows}
open(sys.argv[1], "w").write(json.dumps(doc, indent=1))
for r in rows:
    print(f"{r['variant']:<14}{r['precision']:<6}single {r['median_ms']:7.2f} ms  "
          f"batch256 {r['batch256_images_per_s']:9.1f} img/s")
PY
exit "$status"
