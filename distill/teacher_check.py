"""--t_val: measure the teacher before training and warn loudly when it cannot teach.

A teacher that is no better than the student it should teach only pulls the student towards
its own mistakes (the reference fork's VisDrone student got worse this way).
"""
import csv
from pathlib import Path

CLEAR_MARGIN = 0.01  # mAP@0.5:0.95 points a teacher must lead by to count as "clearly better"


def best_map_from_results(csv_path):
    """Best mAP@0.5:0.95 in a results.csv (a baseline run of train.py)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    values = [float(r["metrics/mAP_0.5:0.95"]) for r in rows if r.get("metrics/mAP_0.5:0.95")]
    if not values:
        raise ValueError(f"{csv_path} holds no mAP@0.5:0.95 values")
    return max(values)


def teacher_map(teacher, data, opt):
    """The teacher's mAP@0.5:0.95 on the val set, at the training image size."""
    import val as validator
    results, _, _ = validator.run(data, model=teacher.float(), imgsz=opt.imgsz, batch_size=opt.batch_size * 2,
                                  device=opt.device, workers=opt.workers, plots=False, half=False,
                                  single_cls=opt.single_cls)
    return float(results[3]), float(results[2])


def reference_map(opt):
    """What the teacher must beat: a baseline results.csv / weights given to --t_val, else nothing."""
    ref = opt.t_val if isinstance(opt.t_val, str) else None
    if not ref:
        return None, None
    if Path(ref).suffix == ".csv":
        return best_map_from_results(ref), f"best mAP@0.5:0.95 of the baseline {ref}"
    import val as validator
    results, _, _ = validator.run(opt.data, weights=ref, imgsz=opt.imgsz, batch_size=opt.batch_size * 2,
                                  device=opt.device, workers=opt.workers, plots=False, half=False)
    return float(results[3]), f"mAP@0.5:0.95 of the student baseline {ref}"


def warn_if_teacher_not_better(teachers, data, opt):
    """Print each teacher's val mAP; a loud warning when one does not clearly beat the baseline."""
    ref, what = reference_map(opt)
    device_dtypes = [next(t.parameters()).dtype for t in teachers]
    for teacher, dtype in zip(teachers, device_dtypes):
        m, m50 = teacher_map(teacher, data, opt)
        teacher.to(dtype)  # back to the precision it distils in
        print(f"Teacher {teacher.source}: mAP@0.5 {m50:.4f}, mAP@0.5:0.95 {m:.4f}")
        if ref is not None and m < ref + CLEAR_MARGIN:
            print("\n" + "!" * 80 + f"\nWARNING: teacher {teacher.source} (mAP@0.5:0.95 {m:.4f}) is not clearly "
                  f"better than the {what} ({ref:.4f}).\nDistilling from it is likely to make the student worse. "
                  "Train the teacher longer or pick a bigger one.\n" + "!" * 80 + "\n")
        elif ref is None:
            print("(give --t_val a baseline results.csv or student .pt to compare the teacher against it)")
