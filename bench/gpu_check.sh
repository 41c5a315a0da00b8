#!/usr/bin/env bash
# Every CUDA path in one call, for the few minutes a GPU is lent (the `device` tool): each step has its own
# timeout, a failure does not stop the others, and one JSON with every result and the GPU's name goes to
# $OUT/gpu_check.json (default ./runs/gpu_check). No network: test data are made from installed packages.
#
#   bash bench/gpu_check.sh                 # on the GPU machine (about 6 minutes)
#   bash bench/gpu_check.sh --device cpu    # rehearsal on a CPU: tiny sizes, every command parses and starts
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda
if [ "${1:-}" = "--device" ] && [ -n "${2:-}" ]; then DEVICE=$2; fi
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/steps"
mkdir -p "$LOG"
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 BLURDET_CACHE="$OUT/cache"
RESULTS="$OUT/.results.jsonl"
: > "$RESULTS"

if [ "$DEVICE" = cpu ]; then
    SIZES="320x180"; BATCHES="1"; FRAMES=4; STEPS=2; PIPE_FRAMES=6; AMP=fp32; HALF=""; T=120; RUNTIMES="--runtimes torch"
else
    SIZES="1280x720"; BATCHES="1 8 16"; FRAMES=120; STEPS=200; PIPE_FRAMES=61; AMP=fp16; HALF="--half"; T=240; RUNTIMES=""
fi

step() {  # step NAME TIMEOUT_S COMMAND...: run it, record rc, seconds and the output's tail
    local name=$1 limit=$2; shift 2
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    "$PY" - "$name" "$rc" "$t0" "$t1" "$LOG/$name.log" "$RESULTS" <<'EOF'
import json, sys
name, rc, t0, t1, log, out = sys.argv[1:]
tail = open(log, errors="replace").read()[-2000:]
with open(out, "a") as f:
    f.write(json.dumps({"step": name, "rc": int(rc), "seconds": round(float(t1) - float(t0), 1),
                        "timed_out": int(rc) in (124, 137), "tail": tail}) + "\n")
EOF
    echo "$name: rc=$rc"
}

# 1. the @gpu tests (on a CPU they skip: the rehearsal only checks that they collect)
step gpu_tests "$T" "$PY" -m pytest -q -m gpu tests
# 2. the pipeline on the demo clip: fp16, batch 4 (a partial last batch: 61 frames), --save, --summary
step pipeline "$T" "$PY" -m pipeline --source demo --simulate-blur 3 --device "$DEVICE" $HALF --amp "$AMP" \
    --batch 4 --max-frames "$PIPE_FRAMES" --save "$OUT/pipeline.mp4" --summary "$OUT/pipeline_summary.json"
# 3. the real-time benchmark at 1280x720, batch 1 / 8 / 16
step realtime "$T" "$PY" bench/realtime.py --device "$DEVICE" --sizes $SIZES --batches $BATCHES $RUNTIMES \
    --frames "$FRAMES" --skip-baseline --out "$OUT"
# 4. short trainings: the kernel estimator; the generator in bf16 with a GAN, then resumed; fp16 with double GAN
# (the CPU rehearsal uses amp=auto: bf16 only where the CPU runs it natively, so an AVX2 machine is not slowed)
if [ "$DEVICE" = cpu ]; then BF16_AMP=auto; else BF16_AMP=bf16; fi
step train_kernel "$T" "$PY" train_deblur.py --config configs/kernel_train.yaml device="$DEVICE" steps="$STEPS" \
    val_every="$STEPS" val_crops=32 project="$OUT/train" name=kernel
step train_bf16_gan "$T" "$PY" train_deblur.py device="$DEVICE" amp="$BF16_AMP" model.d_name=patch_gan max_steps="$STEPS" \
    val_batches_per_epoch=2 project="$OUT/train" name=gan_bf16
step train_bf16_gan_resume "$T" "$PY" train_deblur.py --resume device="$DEVICE" amp="$BF16_AMP" model.d_name=patch_gan \
    max_steps=$((STEPS + 2)) val_batches_per_epoch=2 project="$OUT/train" name=gan_bf16
if [ "$DEVICE" = cpu ]; then FP16_AMP=fp32; else FP16_AMP=fp16; fi
step train_fp16_double_gan "$T" "$PY" train_deblur.py device="$DEVICE" amp="$FP16_AMP" model.d_name=double_gan \
    model.disc_loss=wgan-gp max_steps="$STEPS" val_batches_per_epoch=2 project="$OUT/train" name=double_gan
# 5. one torch_compile pipeline run (the generator: the compiled network; skipped in the CPU rehearsal)
if [ "$DEVICE" != cpu ]; then
    step torch_compile "$T" "$PY" -m pipeline --source demo --simulate-blur 3 --device "$DEVICE" --runtime torch_compile \
        --deblur-weights deblur/weights/fpn_mobilenet_v2.pt --batch 4 --max-frames 40 --summary "$OUT/compile_summary.json"
fi

# 6. many cameras: 16 live streams of 1280x720 at 25 fps each, deblurring on, batched (the CPU rehearsal: 2 tiny ones)
if [ "$DEVICE" = cpu ]; then NSTREAMS=2; SSIZE=320x180; else NSTREAMS=16; SSIZE=1280x720; fi
step streams "$T" "$PY" bench/streams.py --device "$DEVICE" --streams "$NSTREAMS" --size "$SSIZE" --modes live \
    --frames "$FRAMES" --out "$OUT"

# 7. the refiner's cost per frame on the GPU (fp16, batched runtime path; the CPU rehearsal: tiny frames)
if [ "$DEVICE" = cpu ]; then RSIZES="96x64"; RFRAMES=2; else RSIZES="640x360 1280x720"; RFRAMES=30; fi
step refiner_cost "$T" "$PY" bench/refiner_cost.py --device "$DEVICE" --sizes $RSIZES --frames "$RFRAMES"

"$PY" - "$RESULTS" "$OUT/gpu_check.json" "$DEVICE" <<'EOF'
import json, subprocess, sys, datetime
results, out, device = sys.argv[1:]
rows = [json.loads(line) for line in open(results)]
try:
    import torch
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
except Exception as e:  # noqa: BLE001 - report, do not fail
    name = f"torch unavailable: {e}"
doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": device, "gpu": name,
       "passed": sum(r["rc"] == 0 for r in rows), "failed": [r["step"] for r in rows if r["rc"] != 0], "steps": rows}
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
print(f"{doc['passed']} passed, {len(doc['failed'])} failed")
EOF
