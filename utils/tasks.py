"""The training tasks: what differs between detection and segmentation in the loop (the task follows the model).

A task says what its loader's batches carry, which objective scores them and which validation columns
results.csv gets. The trainer asks `TASKS[model.task]` once and never branches on the task itself.
"""
from utils.logging import METRIC_KEYS, VAL_LOSS_KEYS
from utils.loss import ComputeLoss
from utils.objective import DetectionObjective, SegmentationObjective
from utils.seg_loss import ComputeSegLoss

DETECT_METRIC_KEYS = tuple(METRIC_KEYS + VAL_LOSS_KEYS)
SEGMENT_METRIC_KEYS = tuple(f"metrics/{m}({kind})" for kind in "BM"
                            for m in ("precision", "recall", "mAP_0.5", "mAP_0.5:0.95")) + \
    ("val/box_loss", "val/seg_loss", "val/obj_loss", "val/cls_loss")


class DetectTask:
    name = "detect"
    metric_keys = DETECT_METRIC_KEYS  # results.csv's validation columns, in EvalResult.as_tuple() order

    @staticmethod
    def loader_options(opt):
        """Extra create_dataloader options of this task's training and validation loaders."""
        return {}

    @staticmethod
    def objective(model, opt):
        """The task's objective for a model whose hyp holds the scaled loss gains."""
        return DetectionObjective(ComputeLoss(model))

    @staticmethod
    def headline(values):
        """The run's final line of figures from its EvalResult tuple (README quotes it)."""
        return f"mAP@0.5 {values[2]:.3f}, mAP@0.5:0.95 {values[3]:.3f}"


class SegmentTask:
    """YOLOv5 v7.0's instance segmentation: batches carry masks at 1/--mask-ratio of the input."""
    name = "segment"
    metric_keys = SEGMENT_METRIC_KEYS

    @staticmethod
    def loader_options(opt):
        return {"masks": True, "overlap": not opt.no_overlap, "downsample_ratio": opt.mask_ratio}

    @staticmethod
    def objective(model, opt):
        return SegmentationObjective(ComputeSegLoss(model, overlap=not opt.no_overlap))

    @staticmethod
    def headline(values):
        return (f"box mAP@0.5 {values[2]:.3f}, mAP@0.5:0.95 {values[3]:.3f}; "
                f"mask mAP@0.5 {values[6]:.3f}, mAP@0.5:0.95 {values[7]:.3f}")


TASKS = {task.name: task for task in (DetectTask, SegmentTask)}
