#!/usr/bin/env bash
# Rebuild weights/demo_teacher_yolov5s.pt: yolov5s trained from scratch on the embedded synthetic set.
# CPU is enough (about an hour on 2 cores); EPOCHS, DEVICE and BATCH override the defaults.
#   bash scripts/train_demo_teacher.sh            # then: git add weights/demo_teacher_yolov5s.pt
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EPOCHS="${EPOCHS:-100}"
python3 train.py --cfg yolov5s.yaml --data data/synthetic.yaml --imgsz 160 --batch-size "${BATCH:-16}" \
    --epochs "$EPOCHS" --seed 0 --device "${DEVICE:-}" --project runs/teacher --name demo_yolov5s --exist-ok
# fp16 weights, no optimizer: ~14 MB instead of ~85 MB; loads back into a float32 model
python3 -c "from models.checkpoint import strip_checkpoint as s; p, mb = s('runs/teacher/demo_yolov5s/weights/best.pt', 'weights/demo_teacher_yolov5s.pt', half=True); print(f'{p}: {mb:.1f} MB')"
