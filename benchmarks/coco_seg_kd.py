"""COCO-seg distillation protocol (issues 28 and 29), on CPU: yolov5n-seg students started from the official
yolov5n detection weights, a yolov5n-seg teacher fine-tuned much longer, box and mask mAP per row.

    python benchmarks/coco_seg_kd.py --rows teacher      # train the teacher, strip it into weights/ (commit it)
    python benchmarks/coco_seg_kd.py --rows base kd      # rows, all their seeds (a finished run is skipped)
    python benchmarks/coco_seg_kd.py --table             # the tables of the runs finished so far (markdown)
    python benchmarks/coco_seg_kd.py --dry-run --rows all

Every run: ../shared/datasets/coco-seg (328 train / 82 val images), 320 px, batch 16, 2 workers, CPU, YOLOv5's
default hyp, validated every epoch (the curve of issue 28); a row's figure is its last epoch's (no pick by the
val set). Students train --epochs [8]; the teacher --teacher-epochs [20] from the same start with the backbone
frozen (--freeze 10), seed 0, validated once at the end (--noval).
Rows (the distillation defaults plus one change, i.e. what a user gets by adding that flag):
  base       train.py (seeds 0 1 2)                      kd         train_distillation.py defaults (0 1 2):
  mask       mask distillation alone (0 1 2)             output + KL + mask distillation
  proto      defaults + --d_proto (0 1)                  mix        defaults + --d_mix 0.5 0.5 (0 1)
  unlabeled  defaults + coco128's 128 train images as unlabeled images (disjoint from coco-seg) (0 1)
"""
import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import mean, stdev

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()
DATA = SHARED / "datasets" / "coco-seg" / "coco-seg.yaml"
UNLABELED = SHARED / "datasets" / "coco128" / "images" / "train2017"
START = SHARED / "weights" / "yolov5n.pt"
TEACHER = ROOT / "weights" / "coco_seg_teacher_yolov5n-seg.pt"
PROJECT = ROOT / "runs" / "coco_seg_cpu"
RESULTS = ROOT / "benchmarks" / "results" / "coco_seg_cpu"  # committed results.csv of every finished run
ROWS = {  # name: (script, extra flags, seeds)
    "base": ("train.py", [], (0, 1, 2)),
    "kd": ("train_distillation.py", [], (0, 1, 2)),
    "mask": ("train_distillation.py", ["--no-d_output", "--no-d_kl"], (0, 1, 2)),  # the best row: a third seed
    "proto": ("train_distillation.py", ["--d_proto"], (0, 1)),
    "mix": ("train_distillation.py", ["--d_mix", "0.5", "0.5"], (0, 1)),
    "unlabeled": ("train_distillation.py", ["--d_unlabeled", str(UNLABELED)], (0, 1)),
}
sys.path.insert(0, str(ROOT))
from utils.tasks import SEGMENT_METRIC_KEYS  # noqa: E402  (results.csv's one source of column names)

METRICS = tuple(SEGMENT_METRIC_KEYS[i] for i in (2, 3, 6, 7))  # box mAP50, mAP50-95, mask mAP50, mAP50-95


def common_flags(name, seed, epochs):
    return ["--cfg", "yolov5n-seg.yaml", "--weights", str(START), "--data", str(DATA), "--imgsz", "320",
            "--batch-size", "16", "--epochs", str(epochs), "--workers", "2", "--device", "cpu",
            "--project", str(PROJECT), "--name", name, "--exist-ok", "--seed", str(seed), "--noplots"]


def final_row(run, epochs=None):
    """The last epoch's results.csv row of a finished run (its committed copy in RESULTS, else the run's own),
    or None."""
    path = RESULTS / f"{run}.csv"
    if not path.exists():
        path = PROJECT / run / "results.csv"
        if not path.exists() or not (PROJECT / run / "weights" / "best.pt").exists():
            return None
    with open(path, newline="") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    finished = rows and (epochs is None or int(float(rows[-1]["epoch"])) == epochs - 1)
    return rows[-1] if finished else None


def run_row(name, epochs, dry_run):
    script, extra, seeds = ROWS[name]
    for seed in seeds:
        run = f"{name}_s{seed}"
        cmd = [sys.executable, script, *common_flags(run, seed, epochs), *extra]
        if script == "train_distillation.py":
            cmd += ["--t_weights", str(TEACHER)]
        _execute(run, cmd, epochs, dry_run)


def _execute(run, cmd, epochs, dry_run):
    if final_row(run, epochs) is not None:
        print(f"{run}: done")
        return
    print(" ".join(cmd[1:]))
    if dry_run:
        return
    shutil.rmtree(PROJECT / run, ignore_errors=True)  # an unfinished run starts again
    subprocess.run(cmd, cwd=ROOT, check=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT / run / "results.csv", RESULTS / f"{run}.csv")  # the record to commit


def train_teacher(epochs, dry_run):
    # validated at the end; the backbone frozen: fine-tuned whole for 20 epochs on these 328 images it ended
    # below the 8-epoch students (mask mAP50-95 0.092 vs 0.089, box 0.153 vs 0.177), frozen it leads on masks
    cmd = [sys.executable, "train.py", *common_flags("teacher", 0, epochs), "--noval", "--freeze", "10"]
    _execute("teacher", cmd, epochs, dry_run)
    if not dry_run and not TEACHER.exists():
        sys.path.insert(0, str(ROOT))
        from models.checkpoint import strip_checkpoint
        strip_checkpoint(PROJECT / "teacher" / "weights" / "last.pt", TEACHER, half=True)
        print(f"teacher saved to {TEACHER.relative_to(ROOT)}: commit it")


def table(epochs, teacher_epochs):
    """Per row: mean (sd) of the four mAPs over seeds; paired differences to base; mask gap recovered."""
    teacher = final_row("teacher", teacher_epochs)
    base = {s: final_row(f"base_s{s}", epochs) for s in ROWS["base"][2]}
    base = {s: r for s, r in base.items() if r}
    print("| row | seeds | box mAP50 | box mAP50-95 | mask mAP50 | mask mAP50-95 | paired diff mask mAP50-95 "
          "(vs base, same seed) | mask gap recovered (mean paired diff / gap) |")
    print("|---|---|---|---|---|---|---|---|")
    if teacher:
        print(f"| teacher ({teacher_epochs} epochs) | 0 | " + " | ".join(f"{float(teacher[m]):.3f}" for m in METRICS) + " | | |")
    base_mask = mean(float(r[METRICS[3]]) for r in base.values()) if base else None
    for name in ROWS:
        runs = {s: final_row(f"{name}_s{s}", epochs) for s in ROWS[name][2]}
        runs = {s: r for s, r in runs.items() if r}
        if not runs:
            continue
        cells = [_mean_sd([float(r[m]) for r in runs.values()]) for m in METRICS]
        diffs = [float(r[METRICS[3]]) - float(base[s][METRICS[3]]) for s, r in runs.items() if s in base]
        diff = " ".join(f"{d:+.4f}" for d in diffs) if name != "base" else ""
        gap = ""
        if teacher and base_mask is not None and name != "base" and diffs:
            # the mean paired difference (same seed: same start, data order and augmentation) over the gap between
            # the teacher and the baseline's mean; for a row on every base seed it equals the difference of means
            gap_size = float(teacher[METRICS[3]]) - base_mask
            gap = f"{mean(diffs) / gap_size:+.0%}" if gap_size > 0 else "no gap"
        print(f"| {name} | {' '.join(map(str, runs))} | " + " | ".join(cells) + f" | {diff} | {gap} |")


def _mean_sd(values):
    return f"{mean(values):.4f}" + (f" ({stdev(values):.4f})" if len(values) > 1 else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=[], help=f"teacher, {', '.join(ROWS)} or all")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    opt = parser.parse_args()
    rows = ["teacher", *ROWS] if opt.rows == ["all"] else opt.rows
    for name in rows:
        if name == "teacher":
            train_teacher(opt.teacher_epochs, opt.dry_run)
        else:
            run_row(name, opt.epochs, opt.dry_run)
    if opt.table or not rows:
        table(opt.epochs, opt.teacher_epochs)


if __name__ == "__main__":
    main()
