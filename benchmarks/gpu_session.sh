#!/usr/bin/env bash
# Every GPU row of issue 30 in ONE run of at most 9 minutes on one H200 (16 cores, no network).
#
# Here, before the device call (copies ../shared's peers, coco128 and yolov5n.pt into the git-ignored
# shared/, downloads the peers' wheels for python 3.12, and moves the three DeepPCB teachers (42 MB)
# out of the tree so that the working tree fits the 64 MiB carry budget):
#     bash benchmarks/gpu_session.sh --prepare
# On the device (run tool): command "bash benchmarks/gpu_session.sh", carry [".peer_wheels"], timeout_s 600.
# Afterwards, here:   bash benchmarks/gpu_session.sh --restore
#
# Stages, in order of priority, each under `timeout` and skipped when the budget (BUDGET s, default 540)
# has too little left for it; estimated times on one H200 in brackets:
#   1 peers      bench_speed.py --peers: v7.0 train.py, Adlik train_distillation.py (yolov5m teacher), ours,
#                v7.0 val.py vs ours; yolov5s from scratch, 640, batch 64, coco128 replicated   [~210 s]
#   2 step_s_m   FLOP floor (bf16) and the step rows, yolov5s / + yolov5m teacher (peak memory)   [~30 s]
#   3 pair_n_s   floor, step and end-to-end rows, yolov5n + yolov5s teacher                     [~70 s]
#   4 ddp        2 ranks on the one GPU (gloo, benchmarks/ddp_one_gpu.py), train_distillation.py
#                with a cwd feature term (adapters in DDP), yolov5n + yolov5s, 320 px, 1 epoch    [~50 s]
#   5 compile    step rows with --compile default                                                [~110 s]
#   6 compile_ro step rows with --compile reduce-overhead (if time is left)                       [~90 s]
# Everything goes to $OUT: session.md (commands, tables, return codes, seconds), session.log (all
# output), peer_logs.tgz (the peers' own logs and timings).
set -uo pipefail
HELD=/tmp/gpu_session_held_weights
case "${1:-}" in
  --prepare)
    set -e
    mkdir -p shared/datasets shared/weights "$HELD"
    cp -r ../shared/peers shared/
    cp -r ../shared/datasets/coco128 shared/datasets/
    cp ../shared/weights/yolov5n.pt shared/weights/
    bash benchmarks/peer_wheels.sh .peer_wheels
    mv weights/deeppcb_teacher_yolov5s_cpu.pt weights/deeppcb_teacher2_yolov5s_cpu.pt \
       weights/deeppcb_teacher_yolov5s_gpu.pt "$HELD"/
    du -sh --exclude=.git . ; exit 0 ;;
  --restore)
    mv "$HELD"/*.pt weights/ && git status --short weights; exit 0 ;;
esac

OUT=${OUT:-/tmp/gpu_session_out}
BUDGET=${BUDGET:-540}
WORK=$(mktemp -d /tmp/gpu_session.XXXX)
mkdir -p "$OUT"
MD=$OUT/session.md
LOG=$OUT/session.log
T0=$(date +%s)
COCO=shared/datasets/coco128/coco128.yaml
YOLOV5N=shared/weights/yolov5n.pt
DEVICE=${DEVICE:-0}
GPU=${GPU:-"--device $DEVICE --imgsz 640 --batch 64 --workers 15"}  # overridable for a CPU dry run
DDP_SIZE=${DDP_SIZE:-"--imgsz 320 --batch-size 32 --workers 4"}
BENCH="python3 benchmarks/bench_speed.py"
export PYTHONUNBUFFERED=1

{ echo "# issue 30 GPU session, $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import sys, torch, torchvision; print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__)'
} >> "$MD" 2>&1

stage() {  # stage NAME CAP_S MIN_S COMMAND...: run under timeout min(CAP, budget left), or skip
  local name=$1 cap=$2 min=$3
  shift 3
  local left=$(( BUDGET - $(date +%s) + T0 ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < min )); then
    printf '\n## %s: skipped, %s s of the budget left\n' "$name" "$left" >> "$MD"
    return
  fi
  printf '\n## %s (limit %s s)\n\n```\n%s\n```\n' "$name" "$limit" "$*" >> "$MD"
  local s=$(date +%s)
  timeout -k 15 "$limit" "$@" > "$WORK/stage.out" 2>&1
  local rc=$?
  { echo "===== $name: $*"; cat "$WORK/stage.out"; } >> "$LOG"
  grep -E '^\||imgsz [0-9]+, batch [0-9]+|^matmul|^DDP' "$WORK/stage.out" >> "$MD"
  local why=''
  (( rc == 124 || rc == 137 )) && why=' (stopped by its time limit)'
  printf '\nrc %s%s, %s s\n' "$rc" "$why" "$(( $(date +%s) - s ))" >> "$MD"
}

ddp_smoke() {  # 2 ranks share the GPU; passes when rank 0 finished its epoch and wrote results.csv
  torchrun --standalone --nproc_per_node 2 benchmarks/ddp_one_gpu.py train_distillation.py --data "$COCO" \
    --cfg yolov5n.yaml --weights '' --t_weights yolov5s.yaml --d_feature cwd --epochs 1 $DDP_SIZE \
    --device "$DEVICE" --project "$WORK/ddp" --name smoke --exist-ok --noplots --noval \
    && test -s "$WORK/ddp/smoke/results.csv" && echo "DDP smoke: passed, 2 ranks (gloo) on one GPU, results.csv:" \
    && sed 's/^/DDP /' "$WORK/ddp/smoke/results.csv"
}

stage peers 270 120 $BENCH --peers shared/peers $GPU --warmup 5 --iters 15 --data "$COCO" --val-images "${VAL_IMAGES:-640}" \
  --val-weights "$YOLOV5N" --peer-teacher-weights "$YOLOV5N" --peer-wheels .peer_wheels --peer-logs "$WORK/peer_logs"
stage step_s_m 60 30 $BENCH $GPU --warmup 5 --iters 20 --sections floor step
stage pair_n_s 100 60 $BENCH $GPU --warmup 5 --iters 20 --student yolov5n.yaml --teacher yolov5s.yaml \
  --data "$COCO" --sections floor step e2e
export COCO WORK DEVICE DDP_SIZE
export -f ddp_smoke
stage ddp 90 45 bash -c ddp_smoke
stage compile 150 60 $BENCH $GPU --warmup 3 --iters 20 --sections step --compile default
stage compile_ro 120 60 $BENCH $GPU --warmup 3 --iters 20 --sections step --compile reduce-overhead

tar -czf "$OUT/peer_logs.tgz" -C "$WORK" peer_logs 2>/dev/null
printf '\ntotal %s s of a %s s budget\n' "$(( $(date +%s) - T0 ))" "$BUDGET" >> "$MD"
cat "$MD"
