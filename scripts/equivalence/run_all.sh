#!/bin/bash
# Runs every comparison; results go to $EQUIV_WORK/results/<name>.json and .log.
# Usage: SRC=/path/to/sources ./run_all.sh [names...]   (SRC laid out as README.md says)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=${SRC:?set SRC to the folder of the authors\' checkouts (see README.md)}
PY=${PY:-python}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
export EQUIV_WORK=${EQUIV_WORK:-${TMPDIR:-/tmp}/erasure-equivalence}
export PYTHONPATH=${EXTRA_PYTHONPATH:+$EXTRA_PYTHONPATH:}$(cd "$HERE/../.." && pwd)
mkdir -p "$EQUIV_WORK/results"
names=${*:-uce2023 uce2025 rece mace}
for name in $names; do
  case $name in
    uce2023) args="--repo $SRC/uce2023" ;;
    uce2025) args="--repo $SRC/unified-concept-editing" ;;
    rece) args="--repo $SRC/RECE --uce-repo $SRC/uce2023" ;;
    mace) args="--repo $SRC/MACE" ;;
    *) echo "unknown comparison $name"; exit 2 ;;
  esac
  echo "== $name"
  $PY "$HERE/$name.py" $args > "$EQUIV_WORK/results/$name.log" 2>&1; echo "exit $?"
  grep -E "^==|^   " "$EQUIV_WORK/results/$name.log"
done
