"""Training logs: results.csv (YOLOv5 columns first), TensorBoard events, progress-bar text."""
import csv
from pathlib import Path

TRAIN_LOSS_KEYS = ["train/box_loss", "train/obj_loss", "train/cls_loss"]
METRIC_KEYS = ["metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]
VAL_LOSS_KEYS = ["val/box_loss", "val/obj_loss", "val/cls_loss"]
LR_KEYS = ["x/lr0", "x/lr1", "x/lr2"]
YOLOV5_COLUMNS = ["epoch"] + TRAIN_LOSS_KEYS + METRIC_KEYS + VAL_LOSS_KEYS + LR_KEYS


class ResultsLogger:
    """Appends one row per epoch to `results.csv` and mirrors every value to TensorBoard.

    `columns` are the run's, fixed before the first epoch: the task's YOLOv5 columns first and in
    YOLOv5's order, because plotting scripts index them by position; extra columns (distillation terms
    `train/<name>`, `x/elapsed_s`) follow.
    """

    def __init__(self, save_dir, columns=YOLOV5_COLUMNS, tensorboard=True):
        self.csv_path = Path(save_dir) / "results.csv"
        self.columns = list(columns)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(save_dir))
            except ImportError:  # tensorboard is optional; results.csv is the record
                print("TensorBoard not installed: logging to results.csv only (pip install tensorboard)")

    def log_epoch(self, row):
        """Write `row` (column -> float); columns it lacks are left empty."""
        write_header = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if write_header:
                writer.writerow(self.columns)
            writer.writerow([_fmt(row.get(c)) for c in self.columns])
        if self.tb:
            epoch = int(row["epoch"])
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    self.tb.add_scalar(k, float(v), epoch)
            self.tb.flush()

    def start_fresh(self):
        """A new run in an existing folder (--exist-ok) writes its own results.csv, not rows under the old header."""
        self.csv_path.unlink(missing_ok=True)

    def truncate_after(self, epoch):
        """Drop rows after `epoch` (a resumed run re-does the epoch the crash interrupted)."""
        if not self.csv_path.exists():
            return
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= epoch]
        with open(self.csv_path, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    def close(self):
        if self.tb:
            self.tb.close()


def _fmt(v):
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def progress_header(loss_names, image_counts=False):
    """Column titles of the training progress bar (YOLOv5 layout plus any extra loss terms; with
    `image_counts`, the labelled and unlabeled images seen so far this epoch)."""
    names = ["Epoch", "GPU_mem"] + list(loss_names) + ["Instances", "Size"]
    names += ["Labelled", "Unlabeled"] if image_counts else []
    return ("%11s" * len(names)) % tuple(names)


def progress_text(epoch, epochs, mem_gb, losses, n_instances, imgsz, image_counts=None):
    """One progress-bar description line, aligned with `progress_header`."""
    counts = list(image_counts or [])
    return ("%11s" * 2 + "%11.4g" * (len(losses) + 2) + "%11d" * len(counts)) % (
        f"{epoch}/{epochs - 1}", f"{mem_gb:.3g}G", *losses, n_instances, imgsz, *counts)


def setup_cli_logging(verbose=True):
    """Show the project's 'yolov5' log records (model summary, data reports) as plain lines on stdout,
    like the rest of a run's report: stderr carries only an error's one line (utils/cli.py)."""
    import logging
    import sys
    logger = logging.getLogger("yolov5")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    return logger
