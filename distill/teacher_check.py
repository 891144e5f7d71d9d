"""--t_val: measure the teacher before training and warn loudly when it cannot teach.

A teacher that is no better than the student it should teach only pulls the student towards
its own mistakes (the reference fork's VisDrone student got worse this way).
"""
import csv
from pathlib import Path

from utils.cli import UserError

CLEAR_MARGIN = 0.01  # mAP@0.5:0.95 points a teacher must lead by to count as "clearly better"


def best_map_from_results(csv_path):
    """Best mAP@0.5:0.95 in a results.csv (a baseline run of train.py)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    values = [float(r["metrics/mAP_0.5:0.95"]) for r in rows if r.get("metrics/mAP_0.5:0.95")]
    if not values:
        raise UserError(f"{csv_path} holds no mAP@0.5:0.95 values")
    return max(values)


def _val_map(model, data, opt):
    """(mAP@0.5:0.95, mAP@0.5) of a model on the val split at the training image size, at fp32.

    Builds its own loader from the data dict; the model is left exactly as it was (evaluate() works
    on a float copy of a half teacher).
    """
    from utils.evaluate import build_loader, evaluate, print_results
    stride = max(int(model.stride.max()), 32)
    loader = build_loader(data, "val", opt.imgsz, opt.batch_size * 2, stride, opt.single_cls, opt.workers)
    res = evaluate(model, loader, half=False, single_cls=opt.single_cls, nc=int(data["nc"]), leave_bar=False)
    print_results(res)
    return float(res.box.map), float(res.box.map50)


def teacher_map(teacher, data, opt):
    """The teacher's mAP@0.5:0.95 and mAP@0.5 on the val set, at the training image size."""
    return _val_map(teacher, data, opt)


def reference_map(opt, data, device="cpu"):
    """What the teacher must beat: a baseline results.csv / weights given to --t_val, else nothing."""
    ref = opt.t_val if isinstance(opt.t_val, str) else None
    if not ref:
        return None, None
    if Path(ref).suffix == ".csv":
        return best_map_from_results(ref), f"best mAP@0.5:0.95 of the baseline {ref}"
    from models.checkpoint import load_model
    model, _ = load_model(ref, device=device)
    return _val_map(model, data, opt)[0], f"mAP@0.5:0.95 of the student baseline {ref}"


def warn_if_teacher_not_better(teachers, data, opt):
    """Print each teacher's val mAP; a loud warning when one does not clearly beat the baseline."""
    ref, what = reference_map(opt, data, next(teachers[0].parameters()).device)
    for teacher in teachers:
        m, m50 = teacher_map(teacher, data, opt)
        print(f"Teacher {teacher.source}: mAP@0.5 {m50:.4f}, mAP@0.5:0.95 {m:.4f}")
        if ref is not None and m < ref + CLEAR_MARGIN:
            print("\n" + "!" * 80 + f"\nWARNING: teacher {teacher.source} (mAP@0.5:0.95 {m:.4f}) is not clearly "
                  f"better than the {what} ({ref:.4f}).\nDistilling from it is likely to make the student worse. "
                  "Train the teacher longer or pick a bigger one.\n" + "!" * 80 + "\n")
        elif ref is None:
            print("(give --t_val a baseline results.csv or student .pt to compare the teacher against it)")
