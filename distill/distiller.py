"""The Distiller: the extra-loss callable the trainer calls every batch (docs/ARCHITECTURE.md).

It owns the frozen teachers and the chosen methods (output MSE, soft-label KL, feature
distillation), runs the teachers on the very batch the student saw and returns the summed
distillation loss (per image, like the detection terms) with one named item per term.
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from distill.losses import (DEFAULT_D_WEIGHT, DEFAULT_KL_ALPHA, DistillInputs, FeatureDistillation, MultiTeacher,
                            OutputDistillation, SoftLabelKL, average_teachers, multi_mode)
from distill.pseudo import pseudo_targets
from distill.teacher import (TeacherMismatchError, adopt_teacher_anchors, check_compatible, detect_head,
                             load_teacher, run_teacher)

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


class Distiller(nn.Module):
    """Extra loss = output distillation + soft-label KL + feature distillation, as enabled.

    The defaults are train_distillation.py's (output distillation + soft-label KL, the best measured on
    DeepPCB). Only the feature adapters are parameters of this module: teachers are kept in a plain list so
    that they are neither trained, nor saved in `last.pt`, nor counted in `parameters()`.
    Outputs (output MSE, KL) follow --d_multi; feature distillation always keeps one adapter set
    and one loss per teacher (teachers of other widths cannot share one), averaged over teachers.
    """

    def __init__(self, student, teachers, d_output=True, d_weight=DEFAULT_D_WEIGHT, d_kl=True,
                 temperature=4.0, alpha=DEFAULT_KL_ALPHA, d_feature=None, feature_weight=None, feature_layers=None,
                 standardize=False, tau=1.0, multi_teacher="average", off_last_epochs=0,
                 teacher_feature_layers=None, fork_units=False, pseudo_conf=None):
        super().__init__()
        self.teachers = list(teachers)
        self.off_last_epochs, self.active = off_last_epochs, True
        self.pseudo_conf = pseudo_conf  # None: unlabeled images get the soft terms only
        if pseudo_conf is not None and not (d_output or d_kl):
            raise ValueError("--d_pseudo needs teacher outputs of the student's classes: keep --d_output")
        self._batch_outputs = None  # (imgs, teacher outputs) of the current batch, shared by both hooks
        self._pseudo_per_image = None
        self.output_terms = nn.ModuleDict()
        if d_output or d_kl:
            multi_teacher = multi_mode(multi_teacher)
        if d_output:
            self.output_terms["output"] = MultiTeacher(
                OutputDistillation(student, d_weight, fork_units=fork_units), multi_teacher)
        if d_kl:
            self.output_terms["kl"] = MultiTeacher(SoftLabelKL(T=temperature, alpha=alpha, model=student),
                                                   multi_teacher)
        self.feature_layers, self.teacher_layers = [], [None] * len(self.teachers)
        self.feature_terms = nn.ModuleList()
        if d_feature:
            self._build_feature_terms(student, d_feature, feature_weight, feature_layers, teacher_feature_layers,
                                      standardize, tau)
        if not self.output_terms and not self.feature_terms:
            raise ValueError("no distillation method enabled: keep --d_output or --d_kl, or add --d_feature")
        self.to(next(student.parameters()).device)

    def _build_feature_terms(self, student, loss, weight, s_layers, t_layers, standardize, tau):
        self.feature_layers = list(s_layers or student.detect_input_layers())
        self.teacher_layers = []
        for teacher in self.teachers:
            # Same indices in the teacher (n/s/m/l/x share one layout) unless told otherwise.
            layers = list(t_layers or (s_layers or teacher.detect_input_layers()))
            s_ch, t_ch = match_feature_taps(student, teacher, self.feature_layers, layers,
                                            f"teacher {getattr(teacher, 'source', '')}".strip())
            self.teacher_layers.append(layers)
            self.feature_terms.append(FeatureDistillation(s_ch, t_ch, loss=loss, tau=tau,
                                                          standardize=standardize, weight=weight))

    def on_epoch_start(self, epoch, epochs):
        """Switch distillation off for the last `off_last_epochs` epochs (student fine-tunes alone)."""
        self.active = epoch < epochs - self.off_last_epochs
        if not self.active and epoch == epochs - self.off_last_epochs:
            print(f"Distillation off from epoch {epoch} (--d_off_last {self.off_last_epochs})")

    def _teacher_outputs(self, imgs):
        """The teachers' outputs for this batch, computed once even when both hooks need them."""
        if self._batch_outputs is None or self._batch_outputs[0] is not imgs:
            outs = [DistillInputs(*run_teacher(t, imgs, layers))
                    for t, layers in zip(self.teachers, self.teacher_layers)]
            self._batch_outputs = (imgs, outs)
        return self._batch_outputs[1]

    def label_batch(self, imgs, targets, labelled):
        """--d_pseudo: give the batch's unlabeled images the teachers' confident boxes as targets.

        Returns (targets, labelled): with pseudo-labels every image is labelled for the detection loss;
        without, both come back unchanged (unlabeled images then get the distillation terms only).
        """
        if self.pseudo_conf is None or labelled is None or not self.active or bool(labelled.all()):
            return targets, labelled
        outs = self._teacher_outputs(imgs)
        levels = outs[0].preds if len(outs) == 1 else average_teachers(outs).preds
        ids = torch.nonzero(~labelled).view(-1).to(imgs.device)
        extra = pseudo_targets(detect_head(self.teachers[0]), levels, ids, imgs.shape[2:], self.pseudo_conf)
        self._pseudo_per_image = extra.new_tensor(extra.shape[0] / len(ids))
        return torch.cat((targets, extra.to(targets.dtype))), torch.ones_like(labelled)

    def forward(self, imgs, targets, student_preds, student_features):
        zero = student_preds[0].new_zeros(()).float()
        if not self.active:  # keep the same columns so results.csv stays rectangular
            return zero, OrderedDict((k, zero.detach()) for k in self.item_names())
        teacher_outs = self._teacher_outputs(imgs)
        self._batch_outputs = None  # release them: nothing reads them after this batch's loss
        student = DistillInputs(list(student_preds), list(student_features or []))
        total, items = zero, OrderedDict()
        for term in self.output_terms.values():
            loss, parts = term(student, teacher_outs)
            total = total + loss
            items.update(parts)
        if self.feature_terms:
            losses = [term(student, t) for term, t in zip(self.feature_terms, teacher_outs)]
            feat = sum(l for l, _ in losses) / len(losses)
            total = total + feat
            items["feat"] = feat.detach()
        if self.pseudo_conf is not None:  # boxes per unlabeled image (0 in batches without any)
            items["pseudo"] = self._pseudo_per_image if self._pseudo_per_image is not None else zero.detach()
            self._pseudo_per_image = None
        return total, items

    def item_names(self):
        """The names of the items forward returns, in order (progress header before the first batch)."""
        names = []
        if "output" in self.output_terms:
            names += ["dist_box", "dist_obj", "dist_cls"]
        if "kl" in self.output_terms:
            names += ["kd_cls"]
        if self.feature_terms:
            names += ["feat"]
        if self.pseudo_conf is not None:
            names += ["pseudo"]
        return names


def load_checked_teachers(student, device, opt):
    """Every --t_weights teacher, loaded and checked; the student takes their anchors."""
    teachers = []
    for weights in opt.t_weights:
        teacher = load_teacher(weights, cfg=opt.t_cfg or None, device=device)
        name = f"teacher {weights}"
        if opt.d_output or opt.d_kl:
            check_compatible(student, teacher, name)
            if teachers and not torch.allclose(teachers[0].model[-1].anchors.float(),
                                               teacher.model[-1].anchors.float(), rtol=1e-3):
                raise TeacherMismatchError(
                    f"{name} anchors differ from teacher {opt.t_weights[0]}'s: outputs of several teachers are "
                    "compared anchor by anchor; use teachers trained with the same anchors")
            adopt_teacher_anchors(student, teacher, name)
        elif teacher.nc != student.nc:
            print(f"WARNING: {name} has nc={teacher.nc}, the student nc={student.nc} (feature distillation only)")
        teachers.append(teacher)
    return teachers


def build_distiller(student, data, device, opt):
    """Load and check every teacher, then build the Distiller from train_distillation.py's flags."""
    teachers = load_checked_teachers(student, device, opt)
    fork_units = getattr(opt, "d_fork_units", None)
    if fork_units is None:  # resuming a run started before per-image units: keep what it trained with
        fork_units = True
    if getattr(opt, "t_val", False):
        from distill.teacher_check import warn_if_teacher_not_better
        warn_if_teacher_not_better(teachers, data, opt)
    return Distiller(
        student, teachers, d_output=opt.d_output, d_weight=opt.d_weight, d_kl=opt.d_kl,
        temperature=opt.d_temperature, alpha=opt.d_alpha, d_feature=opt.d_feature,
        feature_weight=opt.d_feature_weight, feature_layers=opt.d_feature_layers,
        standardize=opt.d_standardize, tau=opt.d_tau, multi_teacher=opt.d_multi,
        off_last_epochs=opt.d_off_last, teacher_feature_layers=getattr(opt, "t_feature_layers", None),
        fork_units=fork_units, pseudo_conf=getattr(opt, "d_pseudo", None))


# The trainer skips AutoAnchor for the student: it takes the teacher's anchors (load_checked_teachers).
build_distiller.skips_autoanchor = True
# Unlabeled images (--d_unlabeled, the dataset's `unlabeled:`) join training: the teachers teach on them.
build_distiller.learns_from_unlabeled = True

