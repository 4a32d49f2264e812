#!/usr/bin/env bash
# QC time per image on a lent GPU host (device tool): `qcnode check --json` over a folder
# of DICOM files, decode -> verdict, on cuda (twice: cold, then warm) and on the host's CPU.
# Needs, carried: the folder (default .gpu/qc) and .whl (pydicom, tomli_w wheels).
#   scripts/gpu_qc.sh [FOLDER]
set -uo pipefail
folder=${1:-.gpu/qc}
out=${OUT:-/tmp/qcnode-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD
n=0
for dev in cuda cuda cpu; do
  n=$((n + 1))
  QCNODE_DEVICE=$dev python3 -m qcnode.cli check --json "$folder" \
    > "$out/check-$n-$dev.jsonl" 2> "$out/check-$n-$dev.err"
  python3 - "$out/check-$n-$dev.jsonl" "$dev" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
t = [r["timings_ms"] for r in rows if r.get("timings_ms")]
med = {k: round(statistics.median(x[k] for x in t), 1) for k in t[0]} if t else {}
print(sys.argv[2], len(rows), "files", "median ms", med,
      "verdicts", sorted({r["verdict"] for r in rows}), flush=True)
PY
done
