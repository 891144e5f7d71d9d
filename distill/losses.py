"""Distillation losses: one small nn.Module per method behind the `DistillLoss` interface.

Every method is called as `loss_fn(student, teacher) -> (loss, items)` where both sides are
`DistillInputs` (raw prediction levels `[B, na, ny, nx, 5 + nc]`, pre-sigmoid, and optional
feature maps `[B, C, H, W]`), `loss` is a 0-dim tensor in per-image units (the objective turns it
into the batch's units, see utils/objective.py) and `items` an ordered dict `name -> detached 0-dim
tensor` for logging. Teacher tensors are always detached here. Gains are fixed at construction.
"""
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.features import FEATURE_LOSSES, build_adapters, standardize_channels


@dataclass
class DistillInputs:
    """What one network (student or teacher) produced for a batch."""
    preds: Sequence[torch.Tensor] = ()     # raw Detect levels [B, na, ny, nx, 5 + nc (+ nm mask coefficients)]
    features: Sequence[torch.Tensor] = field(default_factory=tuple)  # tapped maps [B, C, H, W]
    protos: Optional[torch.Tensor] = None  # a segmentation head's prototypes [B, nm, H/4, W/4]


def detection_view(inputs, nc):
    """The box, objectness and class columns of the levels (a segmentation head appends its mask
    coefficients after them): what the detection terms compare. The same object when there is nothing else."""
    if not inputs.preds or inputs.preds[0].shape[-1] == 5 + nc:
        return inputs
    return replace(inputs, preds=[lvl[..., :5 + nc] for lvl in inputs.preds])


class DistillLoss(nn.Module):
    """Interface: forward(student: DistillInputs, teacher: DistillInputs) -> (loss, items)."""

    def forward(self, student, teacher):
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Output (response) distillation, "Object detection at 200 FPS" style, as the reference fork
# ----------------------------------------------------------------------------------------------
def _hyp_of(model):
    """The hyperparameter dict the detection loss uses (unwrapping DDP/DP)."""
    hyp = getattr(getattr(model, 'module', model), 'hyp', None)
    if hyp is None:
        raise AttributeError('model.hyp is not set: the trainer sets it before the first loss call')
    return hyp


def _weighted_mse(p, t, w):
    """mean((p - t)^2 * w) over all elements; w broadcasts over the last axis."""
    return ((p - t) ** 2 * w).mean()


def output_distillation_terms(p, t_p, cls_weighting='teacher_obj'):
    """Unscaled (box, obj, cls) sums over levels of the teacher-objectness weighted MSEs.

    Per level, w = sigmoid(teacher objectness logit):
      box = mean(MSE(p[..., :4], t[..., :4]) * w), obj = mean(MSE(p[..., 4], t[..., 4]) * w),
      cls = mean(MSE(p[..., 5:], t[..., 5:]) * w) only when nc > 1 (YOLOv5 trains no class
      logit for a single class, so there is nothing to imitate).
    Means run over every element of the level, so a level's weight is independent of its size.
    """
    zero = p[0].new_zeros(())
    lbox, lobj, lcls = zero, zero, zero
    for pi, ti in zip(p, t_p):
        pi, ti = pi.float(), ti.detach().float()  # teachers may hand over half precision levels
        w = ti[..., 4].sigmoid()
        lbox = lbox + _weighted_mse(pi[..., :4], ti[..., :4], w.unsqueeze(-1))
        lobj = lobj + _weighted_mse(pi[..., 4], ti[..., 4], w)
        if pi.shape[-1] - 5 > 1:
            wc = w.unsqueeze(-1) if cls_weighting == 'teacher_obj' else 1.0
            lcls = lcls + _weighted_mse(pi[..., 5:], ti[..., 5:], wc)
    return lbox, lobj, lcls


def compute_distillation_output_loss(p, t_p, model, d_weight=10):
    """The reference fork's output distillation loss -> (loss, tensor([box, obj, cls]).detach()).

    loss = d_weight * (hyp['box'] * box + hyp['obj'] * obj + hyp['cls'] * cls) with the terms of
    `output_distillation_terms` and the gains of `model.hyp` (already scaled by the trainer).
    Like the reference, it is NOT multiplied by the batch size (see OutputDistillation).
    The components are returned after their gains and d_weight, so they sum to the loss.
    """
    hyp = _hyp_of(model)
    lbox, lobj, lcls = output_distillation_terms(p, t_p)
    parts = torch.stack((lbox * hyp['box'], lobj * hyp['obj'], lcls * hyp['cls'])) * d_weight
    return parts.sum(), parts.detach()


DEFAULT_D_WEIGHT = 2.0  # per image (the fork's 10 per batch of 16 is 0.625); best measured on DeepPCB and the
                        # synthetic set, where 0.5 stayed at 5-27 % of the detection loss (docs/BENCHMARKS.md)


def loss_gains(hyp):
    """The detection loss's gains (box, obj, cls) a distillation term scales by, copied from `hyp`.

    Pass the hyp after YOLOv5's scaling for levels, classes and image size (the trainer scales it before
    it builds the objective), so each term is in the units of the detection term it imitates."""
    return {k: float(hyp[k]) for k in ('box', 'obj', 'cls')}


UNIT_GAINS = {'box': 1.0, 'obj': 1.0, 'cls': 1.0}


class OutputDistillation(DistillLoss):
    """Teacher-objectness weighted MSE on raw outputs (the reference fork's formula).

    L = d_weight * sum_levels [ box * mean(w (p_xywh - t_xywh)^2) + obj * mean(w (p_o - t_o)^2)
                                + cls * mean(w_c (p_c - t_c)^2) [nc > 1] ],  w = sigmoid(t_o),
    w_c = w for cls_weighting='teacher_obj' (the reference) or 1 for 'none'.
    `gains` (box, obj, cls) are the detection loss's gains (`loss_gains(hyp)`), fixed at construction.

    Units: L is a mean over the batch, i.e. per image like YOLOv5's detection terms, so its
    strength does not depend on the batch size, accumulation or the number of GPUs. The
    reference fork added d_weight * L once per batch to a detection loss that is x batch size, so
    its d_weight is per batch: fork_units=True takes d_weight that way, i.e. a per-image gain of
    d_weight / B (a fork d_weight D at batch B is our per-image d_weight D / B), and reproduces
    the fork's total exactly.
    """

    def __init__(self, gains=UNIT_GAINS, d_weight=DEFAULT_D_WEIGHT, cls_weighting='teacher_obj', fork_units=False):
        super().__init__()
        if cls_weighting not in ('teacher_obj', 'none'):
            raise ValueError(f"cls_weighting must be 'teacher_obj' or 'none', got {cls_weighting!r}")
        self.gains = dict(gains)
        self.d_weight, self.cls_weighting, self.fork_units = d_weight, cls_weighting, fork_units

    def forward(self, student, teacher):
        lbox, lobj, lcls = output_distillation_terms(student.preds, teacher.preds, self.cls_weighting)
        per_image_weight = self.d_weight / (student.preds[0].shape[0] if self.fork_units else 1)
        g = self.gains
        parts = {'dist_box': lbox * g['box'] * per_image_weight, 'dist_obj': lobj * g['obj'] * per_image_weight,
                 'dist_cls': lcls * g['cls'] * per_image_weight}
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


# ----------------------------------------------------------------------------------------------
# Soft-label KD (Hinton) adapted to YOLO's sigmoid scores
# ----------------------------------------------------------------------------------------------
def bernoulli_kl(t_logits, s_logits):
    """Elementwise KL(Bern(sigmoid(t)) || Bern(sigmoid(s))), computed in log space for stability."""
    p_t = t_logits.sigmoid()
    log_ratio_pos = F.logsigmoid(t_logits) - F.logsigmoid(s_logits)
    log_ratio_neg = F.logsigmoid(-t_logits) - F.logsigmoid(-s_logits)
    return p_t * log_ratio_pos + (1.0 - p_t) * log_ratio_neg


def softmax_kl(t_logits, s_logits):
    """KL(softmax(t) || softmax(s)) over the last axis (keeps that axis as size 1)."""
    log_t, log_s = F.log_softmax(t_logits, -1), F.log_softmax(s_logits, -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1, keepdim=True)


DEFAULT_KL_ALPHA = 0.3  # x the class gain: starts at 0.1-1.5x the detection loss (docs/BENCHMARKS.md)


class SoftLabelKL(DistillLoss):
    """Hinton soft-label distillation on class scores, weighted by teacher objectness.

    YOLOv5 trains each class score as an independent sigmoid (BCE), so mode='bernoulli'
    (default) matches that: per cell, the mean over classes of KL(Bern(sigmoid(t_c / T)) ||
    Bern(sigmoid(s_c / T))). mode='softmax' uses KL(softmax(t / T) || softmax(s / T)) instead.
      L = alpha * cls * T^2 * sum_levels sum_cells(w * KL_cell) / max(sum_cells(w), B),
    w = sigmoid(t_obj) (or 1 when obj_weighted=False), so background cells, where the teacher's
    class scores mean nothing, are ignored. T^2 keeps the gradient size independent of T (the soft
    gradient shrinks as 1/T^2). The weighted mean runs over the teacher's objects, as YOLOv5's class
    BCE runs over matched targets (a plain mean over cells shrank the term with the objects' density:
    0.02x the detection loss on sparse DeepPCB tiles, docs/BENCHMARKS.md). The floor of one object
    per image (B = batch size) keeps a level where the teacher sees nothing from amplifying background,
    and, unlike a fixed floor, means the same at any batch size and number of ranks; trained teachers
    have 3-40 objects' worth of weight per image and level, so it rarely binds. `cls` is the detection loss's
    class gain (`gains['cls']`, hyp['cls'] after YOLOv5's scaling for nc, levels and image size) and the
    mean over classes mirrors the BCE's mean: the term is in the units of the detection loss's class
    term on any dataset and at any batch size. Without a model the gain is 1.
    With distill_obj=True the objectness Bernoulli KL (unweighted, x gains['obj']) is added as 'kd_obj'.
    Only classes are distilled when nc > 1, like the detection loss.

    alpha scales the soft term only. The detection (hard) loss stays at weight 1 because the
    task objective owns it and the distillation terms are added to it; Hinton's (1 - a) * hard + a * soft is
    the same objective up to a global factor (1 - a) when alpha = a / (1 - a).
    """

    def __init__(self, T=4.0, alpha=1.0, mode='bernoulli', obj_weighted=True, distill_obj=False, gains=UNIT_GAINS):
        super().__init__()
        if mode not in ('bernoulli', 'softmax'):
            raise ValueError(f"mode must be 'bernoulli' or 'softmax', got {mode!r}")
        self.T, self.alpha, self.mode = float(T), float(alpha), mode
        self.obj_weighted, self.distill_obj = obj_weighted, distill_obj
        self.gains = dict(gains)

    def _class_kl(self, s_cls, t_cls):
        if self.mode == 'bernoulli':
            return bernoulli_kl(t_cls / self.T, s_cls / self.T).mean(-1)  # [B, na, ny, nx]
        return softmax_kl(t_cls / self.T, s_cls / self.T).squeeze(-1)

    def forward(self, student, teacher):
        zero = student.preds[0].new_zeros(()).float()
        lcls, lobj = zero, zero
        for si, ti in zip(student.preds, teacher.preds):
            si, ti = si.float(), ti.detach().float()
            if si.shape[-1] - 5 > 1:
                kl = self._class_kl(si[..., 5:], ti[..., 5:])  # [B, na, ny, nx]
                w = ti[..., 4].sigmoid() if self.obj_weighted else torch.ones_like(kl)
                lcls = lcls + (kl * w).sum() / w.sum().clamp(min=float(kl.shape[0]))
            if self.distill_obj:
                lobj = lobj + bernoulli_kl(ti[..., 4] / self.T, si[..., 4] / self.T).mean()
        gain = self.alpha * self.T ** 2
        parts = {'kd_cls': lcls * gain * self.gains['cls']}
        if self.distill_obj:
            parts['kd_obj'] = lobj * gain * self.gains['obj']
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


# ----------------------------------------------------------------------------------------------
# Feature distillation (FitNets / cosine / CWD, optional PKD standardisation)
# ----------------------------------------------------------------------------------------------
# Default gain per feature loss (per image, summed over levels); measured at initialisation so that
# each term starts at a fraction of the detection loss (docs/BENCHMARKS.md, "Distillation scales").
FEATURE_WEIGHTS = {'mse': 0.02, 'cosine': 0.04, 'cwd': 0.04}


class FeatureDistillation(DistillLoss):
    """Imitate the teacher's tapped feature maps through learnable 1x1 adapters.

    L = weight * sum_levels loss(norm(adapter_l(S_l)), norm(T_l)), where loss is
    'mse' (FitNets: mean (s - t)^2), 'cosine' (mean over pixels of 1 - cos along channels) or
    'cwd' (tau^2 * mean over image, channel of KL between spatial softmaxes at temperature tau),
    and norm is PKD's standardisation (each channel to zero mean, unit variance over the batch
    and all pixels) when standardize=True, identity otherwise. weight=None takes the loss's
    default from FEATURE_WEIGHTS. Adapters map student to teacher channels and are this module's
    parameters (the optimizer trains them; the trainer saves them under `extra`).
    """

    def __init__(self, student_channels, teacher_channels, loss='mse', tau=1.0,
                 standardize=False, weight=None):
        super().__init__()
        if loss not in FEATURE_LOSSES:
            raise ValueError(f'loss must be one of {sorted(FEATURE_LOSSES)}, got {loss!r}')
        self.adapters = build_adapters(student_channels, teacher_channels)
        self.loss_name, self.tau, self.standardize = loss, float(tau), standardize
        self.weight = FEATURE_WEIGHTS[loss] if weight is None else float(weight)

    def _level_loss(self, s, t):
        if self.standardize:
            s, t = standardize_channels(s), standardize_channels(t)
        if self.loss_name == 'cwd':
            return FEATURE_LOSSES['cwd'](s, t, tau=self.tau)
        return FEATURE_LOSSES[self.loss_name](s, t)

    def adapt(self, student_maps):
        """The student's maps through this term's 1x1 adapters (the trainable part)."""
        if len(student_maps) != len(self.adapters):
            raise ValueError(f'expected {len(self.adapters)} student feature levels, got {len(student_maps)}')
        return [adapter(s) for adapter, s in zip(self.adapters, student_maps)]

    def loss_of_adapted(self, adapted, teacher_maps):
        """The term from already adapted student maps (the objective adapts through DDP)."""
        if len(teacher_maps) != len(adapted):
            raise ValueError(f'expected {len(adapted)} teacher feature levels, got {len(teacher_maps)}')
        total = adapted[0].new_zeros(()).float()
        for s, t in zip(adapted, teacher_maps):
            s, t = s.float(), t.detach().float()
            if s.shape != t.shape:
                raise ValueError(f'adapted student map {tuple(s.shape)} != teacher map {tuple(t.shape)}')
            total = total + self._level_loss(s, t)
        loss = total * self.weight
        return loss, {'feat': loss.detach()}

    def forward(self, student, teacher):
        return self.loss_of_adapted(self.adapt(student.features), teacher.features)


class FeatureAdapters(nn.Module):
    """Every feature term's adapters as one module: `forward(student_maps)` -> the adapted maps per term.

    It is the trainable part of distillation that DDP wraps (one bucketed all-reduce per optimizer step,
    skipped under `no_sync` like the student's). It holds the terms without owning them in the state
    dict: the objective registers the terms, so checkpoint keys stay `feature_terms.<t>.adapters.<l>.*`.
    """

    def __init__(self, terms):
        super().__init__()
        self.terms = nn.ModuleList(terms)  # the same modules the objective registers (shared, not copied)

    def forward(self, maps_per_term):
        """One list of student maps per term (neck features, or a segmentation head's prototypes)."""
        return [term.adapt(maps) for term, maps in zip(self.terms, maps_per_term)]


# ----------------------------------------------------------------------------------------------
# Several teachers
# ----------------------------------------------------------------------------------------------
def average_teachers(teachers):
    """One DistillInputs whose raw prediction levels are the teachers' means (in float32).

    Assumes same-shaped outputs (same nc, anchors count and strides). Feature maps are not
    averaged: teachers of different widths have different channels, so feature distillation
    keeps one adapter set and one loss per teacher (see distill.objective.DistillationObjective).
    """
    preds = [torch.stack([lvl.detach().float() for lvl in group]).mean(0)
             for group in zip(*[t.preds for t in teachers])]
    return DistillInputs(preds=preds)


MULTI_MODES = ('average', 'per_teacher')
DEPRECATED_MULTI_MODES = {'sum': 'per_teacher'}  # 'sum' always averaged the per-teacher losses


def multi_mode(mode):
    """The canonical --d_multi mode; 'sum' (old name of per_teacher) prints one deprecation line."""
    if mode in DEPRECATED_MULTI_MODES:
        new = DEPRECATED_MULTI_MODES[mode]
        print(f"--d_multi {mode} is deprecated: it means {new} (one loss per teacher, averaged); use --d_multi {new}")
        return new
    if mode not in MULTI_MODES:
        raise ValueError(f"--d_multi must be one of {', '.join(MULTI_MODES)}, got {mode!r}")
    return mode


class MultiTeacher(DistillLoss):
    """Apply one method with several teachers; forward(student, teachers: list of DistillInputs).

    mode='average': the teachers' raw outputs are averaged first, then one loss;
    mode='per_teacher': one loss per teacher, then averaged (items averaged the same way), so the
    loss scale does not grow with the number of teachers. 'sum' is the deprecated name of per_teacher.
    """

    def __init__(self, method, mode='average'):
        super().__init__()
        self.method, self.mode = method, multi_mode(mode)

    def forward(self, student, teachers):
        if isinstance(teachers, DistillInputs):
            teachers = [teachers]
        if self.mode == 'average':
            return self.method(student, average_teachers(teachers))
        results = [self.method(student, t) for t in teachers]
        loss = sum(r[0] for r in results) / len(results)
        items = {k: sum(r[1][k] for r in results) / len(results) for k in results[0][1]}
        return loss, items
