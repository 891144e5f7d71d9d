"""The Distiller: the extra-loss callable the trainer calls every batch (docs/ARCHITECTURE.md).

It owns the frozen teachers and the chosen methods (output MSE, soft-label KL, feature
distillation), runs the teachers on the very batch the student saw and returns the summed
distillation loss with one named item per term for results.csv and the progress bar.
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from distill.losses import DistillInputs, FeatureDistillation, MultiTeacher, OutputDistillation, SoftLabelKL
from distill.teacher import check_compatible, load_teacher, run_teacher


def detect_input_channels(model, layers, imgsz=64):
    """Channel count of each tapped layer, read from one tiny forward pass."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        _, feats = model(x, feature_layers=layers)
    model.train(was_training)
    return [f.shape[1] for f in feats]


class Distiller(nn.Module):
    """Extra loss = output distillation + soft-label KL + feature distillation, as enabled.

    Only the feature adapters are parameters of this module: teachers are kept in a plain list so
    that they are neither trained, nor saved in `last.pt`, nor counted in `parameters()`.
    """

    def __init__(self, student, teachers, d_output=True, d_weight=10.0, d_kl=False, temperature=4.0,
                 alpha=1.0, d_feature=None, feature_weight=1.0, feature_layers=None, standardize=False,
                 tau=1.0, multi_teacher="average", off_last_epochs=0):
        super().__init__()
        self.teachers = list(teachers)
        self.off_last_epochs, self.active = off_last_epochs, True
        self.output_terms = nn.ModuleDict()
        if d_output:
            self.output_terms["output"] = MultiTeacher(OutputDistillation(student, d_weight), multi_teacher)
        if d_kl:
            self.output_terms["kl"] = MultiTeacher(SoftLabelKL(T=temperature, alpha=alpha), multi_teacher)
        self.feature_layers = []
        self.feature_terms = nn.ModuleList()
        if d_feature:
            self.feature_layers = list(feature_layers or student.detect_input_layers())
            s_ch = detect_input_channels(student, self.feature_layers)
            self.teacher_layers = [t.detect_input_layers() for t in self.teachers]
            for teacher, layers in zip(self.teachers, self.teacher_layers):
                t_ch = detect_input_channels(teacher, layers)
                # One adapter set per teacher: teachers of other widths cannot share one.
                self.feature_terms.append(FeatureDistillation(s_ch, t_ch, loss=d_feature, tau=tau,
                                                              standardize=standardize, weight=feature_weight))
        if not self.output_terms and not self.feature_terms:
            raise ValueError("no distillation method enabled: keep --d_output, or add --d_kl / --d_feature")
        self.to(next(student.parameters()).device)

    def on_epoch_start(self, epoch, epochs):
        """Switch distillation off for the last `off_last_epochs` epochs (student fine-tunes alone)."""
        self.active = epoch < epochs - self.off_last_epochs
        if not self.active and epoch == epochs - self.off_last_epochs:
            print(f"Distillation off from epoch {epoch} (--d_off_last {self.off_last_epochs})")

    def forward(self, imgs, targets, student_preds, student_features):
        zero = student_preds[0].new_zeros(()).float()
        if not self.active:  # keep the same columns so results.csv stays rectangular
            return zero, OrderedDict((k, zero.detach()) for k in self.item_names())
        t_layers = getattr(self, "teacher_layers", [None] * len(self.teachers))
        teacher_outs = [DistillInputs(*run_teacher(t, imgs, layers)) for t, layers in zip(self.teachers, t_layers)]
        student = DistillInputs([p.float() for p in student_preds], list(student_features or []))
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
        return total, items

    def item_names(self):
        names = []
        if "output" in self.output_terms:
            names += ["dist_box", "dist_obj", "dist_cls"]
        if "kl" in self.output_terms:
            names += ["kd_cls"]
        if self.feature_terms:
            names += ["feat"]
        return names


def build_distiller(student, data, device, opt):
    """Load and check every teacher, then build the Distiller from train_distillation.py's flags."""
    teachers = []
    for i, weights in enumerate(opt.t_weights):
        teacher = load_teacher(weights, cfg=opt.t_cfg or None, device=device)
        name = f"teacher {weights}"
        if opt.d_output or opt.d_kl:
            check_compatible(student, teacher, name)
        elif teacher.nc != student.nc:
            print(f"WARNING: {name} has nc={teacher.nc}, the student nc={student.nc} (feature distillation only)")
        teachers.append(teacher)
    if getattr(opt, "t_val", False):
        from distill.teacher_check import warn_if_teacher_not_better
        warn_if_teacher_not_better(teachers, data, opt)
    return Distiller(
        student, teachers, d_output=opt.d_output, d_weight=opt.d_weight, d_kl=opt.d_kl,
        temperature=opt.d_temperature, alpha=opt.d_alpha, d_feature=opt.d_feature,
        feature_weight=opt.d_feature_weight, feature_layers=opt.d_feature_layers,
        standardize=opt.d_standardize, tau=opt.d_tau, multi_teacher=opt.d_multi,
        off_last_epochs=opt.d_off_last)
