#!/usr/bin/env bash
# One call on a lent GPU host: synthesise a fresh training set on the host's many CPUs, pack
# it there (no LZMA: it never travels), then train on it with scripts/gpu_grid.sh. The call
# carries the prepared CT (17 MB) instead of a pack, so the training set is no longer bounded
# by the 64 MiB a call may carry.
#   scripts/gpu_synth_grid.sh SYNTH_MINUTES TRAIN_MINUTES [grid-train arguments...]
# Carry: .gpu/ct (prepared_v*.npz), .gpu/neg (neg.npz: `python -m qcnode.model.grid pack`
# here, where pydicom's and pydicom-data's negatives are), .whl (pydicom, tomli_w).
# Env: SYNTH_SEED (5), SYNTH_VARIANTS (6 per pose), SYNTH_WORKERS (nproc - 1), GRID_BENCH,
# SYNTH_ARGS (more synth flags, e.g. --realism).
set -uo pipefail
synth_minutes=${1:?SYNTH_MINUTES}
train_minutes=${2:?TRAIN_MINUTES}
shift 2
out=${OUT:-/tmp/qcnode-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 QCNODE_CT_DIR=$PWD/.gpu/ct
workers=${SYNTH_WORKERS:-$(($(nproc --all) - 1))}  # --all: nproc obeys OMP_NUM_THREADS
data=/tmp/synth-train
packs=/tmp/packs
t0=$SECONDS
python3 -c 'import sys; from qcnode.cli import main; sys.exit(main(sys.argv[1:]))' synth \
  --out "$data" --split train --seed "${SYNTH_SEED:-5}" --view both --count 100000 \
  --variants-per-pose "${SYNTH_VARIANTS:-6}" --visible-lungs --scapulae-in-body \
  --workers "$workers" --threads 1 --minutes "$synth_minutes" --no-ready ${SYNTH_ARGS:-} 2>&1 |
  grep -v " INFO " | tee "$out/synth.log" | tail -n 3 || exit 4
echo "synth: $((SECONDS - t0)) s" | tee -a "$out/synth.log"
cp "$data"/recipe.json "$data"/stats_*.json "$out"/ 2>/dev/null
t1=$SECONDS
python3 -m qcnode.model.grid pack --data "$data" --out "$packs" --recipe gpu-ft --codec none \
  --workers "$workers" --no-negatives 2>&1 | tee "$out/pack.log" || exit 5
cp .gpu/neg/neg.npz "$packs"/ || exit 6
cp "$packs/packs.json" "$out"/
echo "pack: $((SECONDS - t1)) s" | tee -a "$out/pack.log"
PACKS=$packs exec scripts/gpu_grid.sh "$train_minutes" "$@"
