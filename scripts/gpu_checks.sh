#!/usr/bin/env bash
# The GPU checks of the speed issue, in one command on a CUDA machine with no network (run from anywhere):
#
#   bash scripts/gpu_checks.sh            ($OUT: where the files to bring back go; .gpu/ from scripts/gpu_prep.sh)
#
# 1. installs the carried wheels (.gpu/wheels: Hydra, OmegaConf, antlr4) into a private folder; torch and the
#    rest stay the machine's own; the repo runs from its checkout (PYTHONPATH), not pip-installed;
# 2. nvidia-smi and the torch/CUDA versions;
# 3. `make bench`'s GPU report: scripts/bench.py device=cuda -> results/bench_gpu.{json,md} (conf/bench.yaml:
#    fp32 / bf16 / torch.compile, batch search, evaluation per epoch, peak memory, the Table 1 estimate);
# 4. a short real run: CAI-N on the carried BSData subset at 256 px, UNet width 64, 3 epochs x 1000 samples,
#    logger off (scripts/run.py device=cuda) -> metrics.json, run.log, samples.png, history.jsonl.
# Every step has its own timeout, so one failure or hang does not cost the others; the whole script stays
# under ~7 minutes (BENCH_TIMEOUT + RUN_TIMEOUT + ~30 s). Files copied to $OUT (at most 8, none in sub-folders):
# checks.log (this script's whole output), bench_gpu.json, bench_gpu.md, metrics.json, run.log, samples.png,
# history.jsonl, and failed.txt if the run failed. Exit status: the number of failed steps.
#
# CPU dry run of the same flow with tiny sizes (validates the commands, not the numbers):
#   GPU_CHECKS_CPU=1 OUT=/tmp/gpu_out PY=.venv/bin/python nice -n 19 bash scripts/gpu_checks.sh
# Env: PY (default python3), GPU_DIR (default <repo>/.gpu), GPU_WORK (scratch, default /tmp/cai_gpu_checks),
# BENCH_TIMEOUT (250 s), RUN_TIMEOUT (150 s).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
: "${OUT:?set OUT to the folder for the files to bring back}"
PY=${PY:-python3}
GPU_DIR=${GPU_DIR:-$ROOT/.gpu}
WORK=${GPU_WORK:-/tmp/cai_gpu_checks}
CPU=${GPU_CHECKS_CPU:-0}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-250}
RUN_TIMEOUT=${RUN_TIMEOUT:-150}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
FAILED=0
T0=$(date +%s)
step() { echo; echo "=== $* (t=$(( $(date +%s) - T0 )) s, $(date +%T))"; }
fail() { echo "FAILED: $*"; FAILED=$((FAILED + 1)); }
bring() { for f in "$@"; do [ -f "$f" ] && cp "$f" "$OUT/" && echo "-> $OUT/$(basename "$f")"; done; return 0; }

checks() {
step "setup: wheels from $GPU_DIR/wheels into $WORK/site (CPU dry run: $CPU)"
case "$WORK" in /tmp/?*) rm -rf "$WORK" ;; *) echo "GPU_WORK must be a folder under /tmp"; return 99 ;; esac
mkdir -p "$WORK"
ls "$GPU_DIR"/wheels/*.whl "$GPU_DIR/data" || fail "no $GPU_DIR (run scripts/gpu_prep.sh <repo> and carry .gpu)"
timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$WORK/site" "$GPU_DIR"/wheels/*.whl || fail "wheel install"
export PYTHONPATH="$WORK/site:$ROOT"
timeout 90 "$PY" -c "import hydra, omegaconf, cai.benchmark, cai.pipeline; print('imports ok: hydra', hydra.__version__, hydra.__file__, \
'omegaconf', omegaconf.__version__)" || fail "imports"

step "machine"
if [ "$CPU" = 1 ]; then echo "CPU dry run: no nvidia-smi"; else timeout 20 nvidia-smi || fail "nvidia-smi"; fi
timeout 60 "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" || fail "torch"
nproc; free -g 2>/dev/null | head -2

step "bench (timeout $BENCH_TIMEOUT s)"
if [ "$CPU" = 1 ]; then
  # the GPU section's shape at toy sizes: batch search, both precisions, compile in a child process (aot_eager:
  # no C++ toolchain needed), time budget; written to $OUT, never over results/
  BENCH_ARGS=(device=cpu detector.batch_size=4 "sections.cpu=[training,evaluation]" evaluation.n_images=8
    evaluation.repeats=1 "output_json=$OUT/bench_gpu.json" "output_md=$OUT/bench_gpu.md"
    training.cpu.image_size=32 training.cpu.base_width=4 "training.cpu.batches=[4,8]"
    "training.cpu.precisions=[fp32,bf16]" training.cpu.steps=null training.cpu.round_s=0.05
    training.cpu.max_steps=4 training.cpu.rounds=1 "training.cpu.compile=[paper,best]"
    training.cpu.compile_precision=bf16 training.cpu.compile_backend=aot_eager training.cpu.compile_timeout_s=90
    training.cpu.min_compile_s=5 training.cpu.time_budget_s=150)
else
  BENCH_ARGS=(device=cuda "paths.shared_data_dir=$GPU_DIR/data")
fi
timeout -k 10 "$BENCH_TIMEOUT" "$PY" scripts/bench.py "${BENCH_ARGS[@]}" || fail "bench (exit $?)"
[ "$CPU" = 1 ] || bring results/bench_gpu.json results/bench_gpu.md

step "short real run: CAI-N on the BSData subset (timeout $RUN_TIMEOUT s)"
RUN_DIR=$WORK/run
RUN_ARGS=(dataset=bsdata synthesizer=cai_n logger=none foreground=full task_name=gpu_check
  "paths.shared_data_dir=$GPU_DIR/data" "paths.cache_dir=$WORK/cache" "hydra.run.dir=$RUN_DIR")
if [ "$CPU" = 1 ]; then
  RUN_ARGS+=(debug=cpu dataset.image_size=64 detector.model.base_width=8 detector.epochs=1
    detector.samples_per_epoch=16 detector.batch_size=4 detector.eval_batch_size=8 synthesis.workers=1)
else
  RUN_ARGS+=(device=cuda dataset.image_size=256 detector.model.base_width=64 detector.epochs=3
    detector.samples_per_epoch=1000 detector.eval_every=1)
fi
timeout -k 10 "$RUN_TIMEOUT" "$PY" scripts/run.py "${RUN_ARGS[@]}" || fail "run (exit $?)"
[ -f "$RUN_DIR/metrics.json" ] && "$PY" -c "import json, sys; m = json.load(open(sys.argv[1])); \
print({k: m.get(k) for k in ('device', 'metrics', 'selected_epoch', 'n_train_normal', 'n_pseudo', 'n_test')})" \
  "$RUN_DIR/metrics.json"
bring "$RUN_DIR/metrics.json" "$RUN_DIR/run.log" "$RUN_DIR/samples.png" "$RUN_DIR/history.jsonl" "$RUN_DIR/failed.txt"

step "done: $FAILED failed step(s)"
ls -la "$OUT"
return "$FAILED"
}

checks 2>&1 | tee "$OUT/checks.log"
exit "${PIPESTATUS[0]}"
