#!/usr/bin/env bash
# The checks that need a GPU, in under 10 minutes, with one summary at the end:
#   1. the cuda-marked tests (bf16 and fp16 steps on CUDA among them)
#   2. simulated == torchrun over nccl: a 2-process job (2 groups x 1 replica; 4 processes = 2 x 2 with 4+ GPUs)
#      against the simulated run of the same config on one GPU, every parameter within 1e-4
#   3. bf16 and fp16 training runs on CUDA through the command line (finite losses, exit 0)
#   4. the benchmark's hardware rows (scripts/bench.py --hardware: this machine's CPU, bf16 units, precision rows)
# Usage: bash scripts/gpu_check.sh [OUT_DIR]     (run from anywhere; writes OUT_DIR, default outputs/gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled OMP_NUM_THREADS=4 CUBLAS_WORKSPACE_CONFIG=:4096:8
start=$(date +%s)
declare -a summary
record() { summary+=("$1: $2"); echo "gpu_check: $1: $2"; }

if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to torch: nothing to check" >&2
  exit 2
fi
ngpu=$(python -c 'import torch; print(torch.cuda.device_count())')
RUN=(data=synthetic "model.hidden=[64]" trainer.batch_size=64 trainer.max_steps=40 distill.burn_in_steps=5
     distill.exchange_every=5 trainer.eval_every=20 data.eval_examples=256 logger.plots=false topology.device=cuda
     topology.timeout_s=60)

# 1. cuda-marked tests
if timeout 200 python -m pytest -q -m cuda tests >"$OUT/cuda_tests.log" 2>&1; then
  record "cuda tests" "PASS ($(tail -1 "$OUT/cuda_tests.log"))"
else
  record "cuda tests" "FAIL (see $OUT/cuda_tests.log: $(tail -1 "$OUT/cuda_tests.log"))"
fi

# 2. nccl torchrun == simulated
if [ "$ngpu" -lt 2 ]; then
  record "nccl == simulated" "SKIPPED ($ngpu GPU: nccl needs one GPU per rank, so 2 GPUs at least)"
else
  nproc=2; replicas=1
  if [ "$ngpu" -ge 4 ]; then nproc=4; replicas=2; fi
  rm -rf "$OUT/nccl" "$OUT/simulated"
  timeout 150 torchrun --standalone --nproc-per-node=$nproc -m codistill.train "${RUN[@]}" topology.groups=2 \
      "hydra.run.dir=$OUT/nccl" >"$OUT/nccl.log" 2>&1
  rc1=$?
  timeout 120 python -m codistill.train "${RUN[@]}" topology.groups=2 topology.replicas=$replicas \
      "hydra.run.dir=$OUT/simulated" >"$OUT/simulated.log" 2>&1
  rc2=$?
  if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then
    record "nccl == simulated" "FAIL (exit codes torchrun $rc1, simulated $rc2; see $OUT/nccl.log, $OUT/simulated.log)"
  else
    diff=$(python - "$OUT" <<'PY'
import sys
from pathlib import Path
from tests.helpers import load_final, max_abs_diff
out = Path(sys.argv[1])
print(max(max_abs_diff(load_final(out / "nccl", g), load_final(out / "simulated", g)) for g in (0, 1)))
PY
)
    if python -c "import sys; sys.exit(0 if float('$diff') < 1e-4 else 1)"; then
      record "nccl == simulated" "PASS (2 groups x $replicas replicas, largest parameter difference $diff < 1e-4)"
    else
      record "nccl == simulated" "FAIL (largest parameter difference $diff >= 1e-4)"
    fi
  fi
fi

# 3. bf16 / fp16 runs on CUDA
for precision in bf16 fp16; do
  rm -rf "$OUT/$precision"
  if timeout 90 python -m codistill.train "${RUN[@]}" "trainer.precision=$precision" \
      "hydra.run.dir=$OUT/$precision" >"$OUT/$precision.log" 2>&1; then
    record "$precision run" "PASS ($(grep -o 'ensemble acc [0-9.]*' "$OUT/$precision.log" | tail -1))"
  else
    record "$precision run" "FAIL (see $OUT/$precision.log: $(grep 'codistill: error' "$OUT/$precision.log" | tail -1))"
  fi
done

# 4. the benchmark's hardware rows
if timeout 150 python scripts/bench.py --threads 1 --data-workers '' --vec-groups 0 --hardware --compile-hidden '' \
    --hw-hidden '512,512' --hw-repeats 5 --repeats 10 --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1; then
  record "bench hardware rows" "PASS ($OUT/bench.log, $OUT/bench.json)"
else
  record "bench hardware rows" "FAIL (see $OUT/bench.log)"
fi

echo
echo "gpu_check summary ($ngpu GPU(s), $(( $(date +%s) - start )) s):"
failed=0
for line in "${summary[@]}"; do
  echo "  $line"
  case "$line" in *": FAIL"*) failed=1 ;; esac
done
exit $failed
