"""The training objective: the one thing the trainer calls per batch (docs/ARCHITECTURE.md, "The objective").

A training step reads forward -> objective -> backward:

    raw, features = model(batch.imgs, feature_layers=objective.feature_layers)
    loss, items = objective(batch, raw, features)
    loss.backward()

Plain training optimises the task objective alone (`DetectionObjective`); distillation
(`distill.objective.DistillationObjective`) wraps the task objective and adds the teachers' terms. A new
task or a new term is a new class behind this interface, never a special case in the trainer.

Units: every term is a mean per image, as YOLOv5's box/obj/cls; the loss an objective returns is the
sum over terms of (per-image value x the number of images the term covers), YOLOv5's `loss * batch_size`.
"""
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Batch:
    """One training batch on its way through the step."""
    imgs: torch.Tensor  # float [B, 3, H, W] in 0-1, on the device
    targets: torch.Tensor  # [n, 6] (image, class, xc, yc, w, h), boxes normalised to the input
    labelled: Optional[torch.Tensor] = None  # bool [B] on the host: which images have labels; None: all
    masks: Optional[torch.Tensor] = None  # segmentation targets (layout: utils/datasets.py)

    @property
    def size(self):
        return self.imgs.shape[0]

    def relabelled(self, targets, labelled, masks=None):
        """The same images with other targets (e.g. pseudo-labels for the unlabeled ones), and masks."""
        return replace(self, targets=targets, labelled=labelled, masks=self.masks if masks is None else masks)


class Objective(nn.Module):
    """The interface. A subclass declares in `__init__`, before the first batch:

    - `item_names` (tuple of str): the per-image items `forward` returns, in order; they become the
      progress-bar header and the `train/<name>` columns of results.csv;
    - `feature_layers` (tuple of int): student layers whose outputs `forward` reads (() for none);

    and implements `forward(batch, raw, features) -> (loss, items)`: `raw` is the student's train-mode
    output, `features` the maps of `feature_layers`; `loss` is a 0-dim tensor in the units above; `items`
    a detached 1-D tensor, one per-image value per name. Its nn.Module parameters are trained with the
    student (they join the optimizer), its `state_dict()` is saved for `--resume`, and
    `wrap_trainable` routes them through DDP. Teachers and other frozen parts are not submodules.
    """
    item_names: Sequence[str] = ()
    feature_layers: Sequence[int] = ()

    def forward(self, batch, raw, features):
        raise NotImplementedError

    def on_epoch_start(self, epoch, epochs):
        """Called before every epoch (a term may switch itself off for the last epochs)."""

    def trainable_modules(self):
        """Modules trained with the student, for the optimizer's parameter groups."""
        return []

    def wrap_trainable(self, wrap):
        """Route the trainable modules through `wrap` (DDP); returns the wrapped modules (for `no_sync`)."""
        return []


class DetectionObjective(Objective):
    """YOLOv5's detection loss (utils/loss.py ComputeLoss) on the labelled images of the batch."""
    item_names = ("box_loss", "obj_loss", "cls_loss")

    def __init__(self, compute_loss):
        super().__init__()
        self.compute_loss = compute_loss

    def forward(self, batch, raw, features=()):
        return self.compute_loss(raw, batch.targets, batch.labelled)

    def task_losses(self, batch, raw):
        """The loss per task ({'detect': loss}, items): what a per-task mix of hard and soft losses reads."""
        loss, items = self.compute_loss(raw, batch.targets, batch.labelled)
        return {"detect": loss}, items

    @staticmethod
    def detection_levels(raw):
        """The raw prediction levels inside the train-mode output (the output itself for detection)."""
        return raw

    @staticmethod
    def protos(raw):
        """The mask prototypes inside the train-mode output (None: a detection model has none)."""
        return None


class SegmentationObjective(Objective):
    """YOLOv5 v7.0's segmentation loss (utils/seg_loss.py ComputeSegLoss): the detection terms plus the
    mask BCE of coefficients x prototypes inside each box, on the labelled images of the batch."""
    item_names = ("box_loss", "seg_loss", "obj_loss", "cls_loss")

    def __init__(self, compute_loss):
        super().__init__()
        self.compute_loss = compute_loss
        self.overlap = compute_loss.overlap  # the masks' layout (utils/datasets.py), for pseudo masks

    def forward(self, batch, raw, features=()):
        return self.compute_loss(raw, batch.targets, batch.masks, batch.labelled)

    def task_losses(self, batch, raw):
        """({'detect': box + obj + cls, 'segment': seg}, items), both in the batch's units."""
        (detection, segmentation), items = self.compute_loss.task_losses(raw, batch.targets, batch.masks,
                                                                         batch.labelled)
        return {"detect": detection, "segment": segmentation}, items

    @staticmethod
    def detection_levels(raw):
        """The raw prediction levels of a segmentation model's train-mode output `(levels, proto)`."""
        return raw[0]

    @staticmethod
    def protos(raw):
        return raw[1]


class ObjectiveBuilder:
    """What train.py optimises: the task objective alone. train_distillation.py passes a subclass
    (distill.builder.DistillationBuilder) that loads teachers and adds their terms.

    The trainer calls, in this order: `prepare_student` (before AutoAnchor and the loss exist),
    `unlabeled_source` (when it builds the training loader), then `build` (after the loss gains are scaled).
    """
    script = "train.py"  # what `--resume` must be run with

    def __init__(self, opt=None):
        self.opt = opt

    def prepare_student(self, student, data, device, resuming):
        """Adjust the student before training. Returns why AutoAnchor must leave its anchors alone when
        this set them (a phrase for the log), else None."""
        return None

    def unlabeled_source(self, data):
        """Unlabeled training images for the batches (None: none). The task loss cannot learn from them."""
        if data.get("unlabeled"):
            print(f"unlabeled: {data['unlabeled']} not used (the detection loss needs labels; "
                  "train_distillation.py teaches the student on unlabeled images)")
        return None

    def build(self, task_objective, student, hyp, unlabeled_images):
        """The objective; `hyp` holds the scaled loss gains, `unlabeled_images` counts the loader's."""
        return task_objective
