"""--t_val: measure the teacher before training and warn loudly when it cannot teach.

A teacher that is no better than the student it should teach only pulls the student towards
its own mistakes (the reference fork's VisDrone student got worse this way).
"""
import csv
from pathlib import Path

from utils.cli import UserError

CLEAR_MARGIN = 0.01  # mAP@0.5:0.95 points a teacher must lead by to count as "clearly better"


BOX_COLUMN, MASK_COLUMN = "metrics/mAP_0.5:0.95", "metrics/mAP_0.5:0.95(M)"


def best_map_from_results(csv_path, masks=False):
    """Best mAP@0.5:0.95 in a results.csv (a baseline run of train.py): its masks' for a -seg pair, when the
    baseline has them, else its boxes' (v7.0's seg columns end in (B) / (M))."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = (MASK_COLUMN, BOX_COLUMN + "(B)", BOX_COLUMN) if masks else (BOX_COLUMN, BOX_COLUMN + "(B)")
    for column in columns:
        values = [float(r[column]) for r in rows if r.get(column)]
        if values:
            return max(values)
    raise UserError(f"{csv_path} holds no {' or '.join(columns)} values: give --t_val a baseline's results.csv")


def _val_map(model, data, opt, masks=False):
    """(mAP@0.5:0.95, mAP@0.5) of a model on the val split at the training image size, at fp32: of its masks
    when `masks` (a -seg pair on a dataset with polygons), else of its boxes.

    Builds its own loader from the data dict; the model is left exactly as it was (evaluate() works
    on a float copy of a half teacher).
    """
    from utils.evaluate import build_loader, evaluate, print_results
    from utils.tasks import TASKS
    stride = max(int(model.stride.max()), 32)
    options = TASKS["segment" if masks else "detect"].loader_options(opt)  # the training loader's mask layout
    loader = build_loader(data, "val", opt.imgsz, opt.batch_size * 2, stride, opt.single_cls, opt.workers, **options)
    res = evaluate(model, loader, half=False, single_cls=opt.single_cls, nc=int(data["nc"]), leave_bar=False)
    print_results(res)
    scored = res.mask if masks else res.box
    return float(scored.map), float(scored.map50)


def teacher_map(teacher, data, opt, masks=False):
    """The teacher's mAP@0.5:0.95 and mAP@0.5 on the val set, at the training image size."""
    return _val_map(teacher, data, opt, masks)


def reference_map(opt, data, device="cpu", masks=False):
    """What the teacher must beat: a baseline results.csv / weights given to --t_val, else nothing."""
    ref = opt.t_val if isinstance(opt.t_val, str) else None
    if not ref:
        return None, None
    kind = "mask " if masks else ""
    if Path(ref).suffix == ".csv":
        return best_map_from_results(ref, masks), f"best {kind}mAP@0.5:0.95 of the baseline {ref}"
    from models.checkpoint import load_model
    model, _ = load_model(ref, device=device)
    if masks and model.task != "segment":
        raise UserError(f"--t_val {ref} is a detection model, but a -seg pair is compared on its masks: give "
                        "--t_val a -seg baseline's weights or results.csv")
    return _val_map(model, data, opt, masks)[0], f"{kind}mAP@0.5:0.95 of the student baseline {ref}"


def warn_if_teacher_not_better(teachers, data, opt, student_task="detect"):
    """Print each teacher's val mAP; a loud warning when one does not clearly beat the baseline. A -seg pair
    is judged on its masks (the task the student is distilled for), as v7.0's segment/val.py scores them."""
    masks = student_task == "segment" and all(t.task == "segment" for t in teachers)
    kind = "mask " if masks else ""
    ref, what = reference_map(opt, data, next(teachers[0].parameters()).device, masks)
    for teacher in teachers:
        m, m50 = teacher_map(teacher, data, opt, masks)
        print(f"Teacher {teacher.source}: {kind}mAP@0.5 {m50:.4f}, {kind}mAP@0.5:0.95 {m:.4f}")
        if ref is not None and m < ref + CLEAR_MARGIN:
            print("\n" + "!" * 80 + f"\nWARNING: teacher {teacher.source} ({kind}mAP@0.5:0.95 {m:.4f}) is not "
                  f"clearly better than the {what} ({ref:.4f}).\nDistilling from it is likely to make the student "
                  "worse. Train the teacher longer or pick a bigger one.\n" + "!" * 80 + "\n")
        elif ref is None:
            print("(give --t_val a baseline results.csv or student .pt to compare the teacher against it)")
