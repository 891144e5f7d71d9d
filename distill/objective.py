"""Distillation as a training objective: the task's objective plus the teachers' terms (utils/objective.py).

Per batch, in this order: each teacher runs once on the batch the student saw (outside the student's
autocast), the unlabeled images get the teachers' boxes as labels (--d_pseudo), the task objective
scores the student against the labels, and the distillation terms score it against the teachers.
One total comes back, with one named item per term.
"""
import torch
import torch.nn as nn

from distill.losses import (DistillInputs, FeatureAdapters, FeatureDistillation, MultiTeacher, OutputDistillation,
                            SoftLabelKL, average_teachers, detection_view, loss_gains, multi_mode)
from distill.mask_terms import MaskDistillation
from distill.pseudo import add_pseudo_masks, pseudo_masks, pseudo_targets
from distill.teacher import TeacherMismatchError, detect_head, run_teacher
from utils.objective import Objective

PROBE_SIZE = 128  # px: resolves strides up to 64 (P6 models) with a cheap forward pass


def tapped_shapes(model, layers, imgsz=PROBE_SIZE):
    """(channels, height, width) of each tapped layer, read from one tiny forward pass."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()  # a probe must not move the BatchNorm running statistics
    try:
        with torch.no_grad():
            _, feats = model(x, feature_layers=layers)
    finally:
        model.train(was_training)
    return [tuple(f.shape[1:]) for f in feats]


def match_feature_taps(student, teacher, s_layers, t_layers, teacher_name):
    """Channels of both sides per tapped level; refuse taps whose spatial sizes (strides) differ."""
    s_shapes, t_shapes = tapped_shapes(student, s_layers), tapped_shapes(teacher, t_layers)
    s_hw, t_hw = [s[1:] for s in s_shapes], [t[1:] for t in t_shapes]
    if s_hw != t_hw:
        raise TeacherMismatchError(
            f"student layers {s_layers} give {PROBE_SIZE}px maps {s_hw} but {teacher_name} layers {t_layers} "
            f"give {t_hw}: tap layers of the same strides (set --t_feature_layers to match --d_feature_layers)")
    return [s[0] for s in s_shapes], [t[0] for t in t_shapes]


class DistillationObjective(Objective):
    """The task objective + output distillation + soft-label KL + feature, mask and prototype terms, as enabled.

    `output_terms`: name -> MultiTeacher over OutputDistillation / SoftLabelKL (they follow --d_multi), on
    the detection columns of the levels; `feature_terms`: one FeatureDistillation per teacher (teachers of
    other widths cannot share adapters), averaged; `mask_terms`: name -> MultiTeacher over MaskDistillation;
    `proto_terms`: one FeatureDistillation per teacher on the prototypes, averaged. Teachers are kept in a
    plain list: they are neither trained, nor saved, nor parameters.
    `pseudo_conf`: the teachers' detections (and masks) above it become the unlabeled images' labels (None:
    the unlabeled images get the distillation terms only). `off_last_epochs`: the student trains alone then.
    `mix`: task ('detect', 'segment') -> alpha: that task's loss becomes (1 - alpha) * hard + alpha * soft
    (--d_mix); without it the soft terms are added to the hard loss. `teacher_forwards`: each teacher's
    compiled forward (--compile), None to call the teacher itself.
    """

    def __init__(self, task, teachers, output_terms, feature_terms=(), feature_layers=(), teacher_layers=None,
                 pseudo_conf=None, off_last_epochs=0, teacher_forwards=None, mask_terms=None, proto_terms=(),
                 mix=None):
        super().__init__()
        if not (output_terms or feature_terms or mask_terms or proto_terms):
            raise ValueError("a distillation objective needs an output, feature, mask or prototype term")
        self.task = task
        self.teachers = list(teachers)
        self.nc = detect_head(self.teachers[0]).nc if self.teachers else None
        self.teacher_forwards = list(teacher_forwards or [None] * len(self.teachers))  # compiled (--compile)
        self.output_terms = nn.ModuleDict(output_terms)
        self.feature_terms = nn.ModuleList(feature_terms)
        self.mask_terms = nn.ModuleDict(mask_terms or {})
        self.proto_terms = nn.ModuleList(proto_terms)
        self.feature_layers = tuple(feature_layers) if feature_terms else ()
        self.teacher_layers = list(teacher_layers) if teacher_layers else [None] * len(self.teachers)
        self.pseudo_conf, self.off_last_epochs, self.active = pseudo_conf, off_last_epochs, True
        self.mix = dict(mix or {})
        # not a submodule: the terms own the adapters (and their checkpoint keys); this routes them through DDP
        adapted = [*feature_terms, *proto_terms]
        self._adapt = [FeatureAdapters(adapted)] if adapted else []
        self.item_names = tuple(task.item_names) + tuple(self._term_names())

    def _term_names(self):
        names = []
        if "output" in self.output_terms:
            names += ["dist_box", "dist_obj", "dist_cls"]
        if "kl" in self.output_terms:
            names += ["kd_cls"]
        if self.feature_terms:
            names += ["feat"]
        if self.mask_terms:
            names += ["kd_mask"]
        if self.proto_terms:
            names += ["proto"]
        if self.pseudo_conf is not None:
            names += ["pseudo"]  # boxes per unlabeled image (0 in batches without any)
        return names

    # ------------------------------------------------------------ the interface
    def on_epoch_start(self, epoch, epochs):
        """Switch distillation off for the last `off_last_epochs` epochs (student fine-tunes alone)."""
        self.active = epoch < epochs - self.off_last_epochs
        if not self.active and epoch == epochs - self.off_last_epochs:
            print(f"Distillation off from epoch {epoch} (--d_off_last {self.off_last_epochs})")

    def trainable_modules(self):
        return list(self._adapt)

    def wrap_trainable(self, wrap):
        self._adapt = [wrap(m) for m in self._adapt]
        return list(self._adapt)

    def forward(self, batch, raw, features=()):
        if not self.active:  # the same columns, so results.csv stays rectangular
            loss, items = self.task(batch, raw, features)
            return loss, torch.cat((items, items.new_zeros(len(self.item_names) - len(items))))
        teacher_outs = [run_teacher(t, batch.imgs, layers, forward)
                        for t, layers, forward in zip(self.teachers, self.teacher_layers, self.teacher_forwards)]
        batch, pseudo_per_image = self._pseudo_labelled(batch, teacher_outs)
        hard, task_items = self.task.task_losses(batch, raw)
        student = DistillInputs(list(self.task.detection_levels(raw)), list(features or []), self.task.protos(raw))
        soft, soft_items = self._soft_terms(student, teacher_outs)
        if pseudo_per_image is not None:
            soft_items.append(pseudo_per_image)
        loss = self._combined(hard, soft, batch.size)
        return loss, torch.cat((task_items, torch.stack([v.detach().float().reshape(()) for v in soft_items])))

    # ------------------------------------------------------------ the parts
    def _combined(self, hard, soft, batch_size):
        """Each task's hard loss (in the batch's units) with its soft terms (per image, so x B): added, or
        (1 - alpha) * hard + alpha * soft for the tasks --d_mix names."""
        total = 0
        for task in {**hard, **soft}:
            h, s = hard.get(task, 0), soft.get(task)
            if s is None:
                total = total + h
            elif task in self.mix:
                total = total + (1 - self.mix[task]) * h + self.mix[task] * s * batch_size
            else:
                total = total + (h + s * batch_size)
        return total

    def _soft_terms(self, student, teacher_outs):
        """The per-image distillation terms summed per task ('detect', 'segment'), and their items in
        item_names order."""
        soft, items = {}, []

        def add(task, loss, parts):
            soft[task] = soft[task] + loss if task in soft else loss
            items.extend(parts)

        det_student = detection_view(student, self.nc)
        det_teachers = [detection_view(t, self.nc) for t in teacher_outs]
        for term in self.output_terms.values():
            loss, parts = term(det_student, det_teachers)
            add("detect", loss, parts.values())
        adapted = self._adapted(student)
        if self.feature_terms:
            feat = self._mean_of_adapted(self.feature_terms, adapted, [t.features for t in teacher_outs])
            add("detect", feat, [feat.detach()])
        for term in self.mask_terms.values():
            loss, parts = term(student, teacher_outs)
            add("segment", loss, parts.values())
        if self.proto_terms:
            proto = self._mean_of_adapted(self.proto_terms, adapted[len(self.feature_terms):],
                                          [[t.protos] for t in teacher_outs])
            add("segment", proto, [proto.detach()])
        return soft, items

    def _adapted(self, student):
        """The student's maps through every adapter term, in one call of the (DDP-wrapped) adapters."""
        if not self._adapt:
            return []
        inputs = [student.features] * len(self.feature_terms) + [[student.protos]] * len(self.proto_terms)
        return self._adapt[0](inputs)

    @staticmethod
    def _mean_of_adapted(terms, adapted, teacher_maps):
        losses = [term.loss_of_adapted(a, t)[0] for term, a, t in zip(terms, adapted, teacher_maps)]
        return sum(losses) / len(losses)

    def _pseudo_labelled(self, batch, teacher_outs):
        """--d_pseudo: the unlabeled images take the teachers' confident boxes (and, for segmentation, their
        masks) as targets, so the task loss reads every image. Returns (batch, boxes per unlabeled image),
        or (batch, None) without it."""
        if self.pseudo_conf is None:
            return batch, None
        zero = batch.targets.new_zeros(())
        if batch.labelled is None or bool(batch.labelled.all()):
            return batch, zero
        levels = teacher_outs[0].preds if len(teacher_outs) == 1 else average_teachers(teacher_outs).preds
        ids = torch.nonzero(~batch.labelled).view(-1).to(batch.imgs.device)
        extra, cells = pseudo_targets(detect_head(self.teachers[0]), levels, ids, batch.imgs.shape[2:],
                                      self.pseudo_conf, with_cells=True)
        masks = None
        if batch.masks is not None:
            new = pseudo_masks(teacher_outs, self.nc, extra, cells, batch.masks.shape[-2:])
            masks = add_pseudo_masks(batch.masks, extra, new, self.task.overlap)
        targets = torch.cat((batch.targets, extra.to(batch.targets.dtype)))
        return batch.relabelled(targets, torch.ones_like(batch.labelled), masks), zero + extra.shape[0] / len(ids)


def output_terms_from(gains, d_output, d_weight, d_kl, temperature, alpha, multi_teacher, fork_units=False):
    """The output terms (name -> MultiTeacher) the flags ask for; gains from `loss_gains(hyp)`."""
    terms = {}
    if d_output or d_kl:
        multi_teacher = multi_mode(multi_teacher)
    if d_output:
        terms["output"] = MultiTeacher(OutputDistillation(gains, d_weight, fork_units=fork_units), multi_teacher)
    if d_kl:
        terms["kl"] = MultiTeacher(SoftLabelKL(T=temperature, alpha=alpha, gains=gains), multi_teacher)
    return terms


def feature_terms_from(student, teachers, loss, weight, s_layers, t_layers, standardize, tau):
    """One FeatureDistillation per teacher on the tapped layers -> (terms, student layers, teacher layers)."""
    given = s_layers
    s_layers = list(s_layers or student.detect_input_layers())
    terms, teacher_layers = [], []
    for teacher in teachers:
        # Same indices in the teacher (n/s/m/l/x share one layout) unless told otherwise; by default
        # each side taps the layers that feed its own Detect.
        layers = list(t_layers or given or teacher.detect_input_layers())
        s_ch, t_ch = match_feature_taps(student, teacher, s_layers, layers,
                                        f"teacher {getattr(teacher, 'source', '')}".strip())
        teacher_layers.append(layers)
        terms.append(FeatureDistillation(s_ch, t_ch, loss=loss, tau=tau, standardize=standardize, weight=weight))
    return terms, s_layers, teacher_layers


def mask_terms_from(student, teachers, gains, temperature, weight):
    """The mask term (name -> MultiTeacher): each teacher's own masks (prototype bases differ, so teachers are
    never averaged: one loss per teacher, averaged), in the segmentation loss's units (its gain is hyp box)."""
    term = MaskDistillation(detect_head(teachers[0]), detect_head(student).nc, T=temperature,
                            gain=gains["box"] * weight)
    return {"mask": MultiTeacher(term, "per_teacher")}


def proto_terms_from(student, teachers, loss, weight, standardize, tau):
    """Prototype imitation: one FeatureDistillation per teacher from the student's prototypes to the teacher's
    (a 1x1 adapter, the identity at the start when the counts match)."""
    nm = detect_head(student).nm
    return [FeatureDistillation([nm], [detect_head(t).nm], loss=loss, tau=tau, standardize=standardize,
                                weight=weight) for t in teachers]


__all__ = ["DistillationObjective", "output_terms_from", "feature_terms_from", "mask_terms_from", "proto_terms_from",
           "match_feature_taps", "loss_gains"]
