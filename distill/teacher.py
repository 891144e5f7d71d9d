"""The frozen teacher: loaded once, checked against the student, run without autograd.

Output distillation compares predictions anchor by anchor, so teacher and student must agree on
classes, levels and strides (a mismatch is refused before the first batch); the student takes
the teacher's anchors.
"""
from contextlib import contextmanager
from pathlib import Path

import torch

from distill.losses import DistillInputs
from models.checkpoint import load_model
from models.yolo import Model
from utils.cli import UserError
from utils.files import resolve_file
from utils.torch_utils import to_channels_last


class TeacherMismatchError(UserError):
    """Teacher and student cannot be distilled output-to-output."""


def load_teacher(weights, cfg=None, device="cpu", half=None):
    """A teacher model from a checkpoint (own or official YOLOv5), frozen, fused, in eval mode.

    `cfg` overrides the architecture when the checkpoint carries none or the wrong one: the
    checkpoint's tensors are loaded into a model built from that YAML.
    """
    model, meta = load_model(weights, device="cpu")
    if cfg:
        rebuilt = Model(resolve_file(cfg), nc=model.nc)
        missing, unexpected = rebuilt.load_state_dict(model.state_dict(), strict=False)
        if missing or unexpected:
            raise TeacherMismatchError(
                f"--t_cfg {cfg} does not fit --t_weights {weights}: {len(missing)} missing and "
                f"{len(unexpected)} unexpected tensors (first: {(missing + unexpected)[:3]})")
        rebuilt.names = model.names
        model = rebuilt
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.fuse()
    device = torch.device(device)
    half = device.type == "cuda" if half is None else half
    model = model.to(device).half() if half else model.to(device)
    to_channels_last(model, device)  # the student's layout (NHWC on CUDA): no layout change between them
    model.source = str(Path(weights))
    return model


def detect_head(model):
    return model.model[-1]


def check_compatible(student, teacher, teacher_name="teacher"):
    """Raise TeacherMismatchError naming both values when outputs cannot be compared one to one.

    Anchors are not checked: the student takes the teacher's (`adopt_teacher_anchors`).
    """
    s, t = detect_head(student), detect_head(teacher)
    hint = ("Train or pick a teacher on the same dataset (same --data, so the same nc) and model family "
            "(same levels and strides), or use feature-only distillation (--no-d_output --no-d_kl --d_feature ...) "
            "which needs no matching outputs.")
    if s.nc != t.nc:
        raise TeacherMismatchError(f"{teacher_name} has nc={t.nc} classes but the student has nc={s.nc}. {hint}")
    if (s.nl, s.na) != (t.nl, t.na):
        raise TeacherMismatchError(
            f"{teacher_name} has {t.nl} output levels x {t.na} anchors, the student {s.nl} x {s.na}. {hint}")
    if not torch.equal(s.stride.cpu().float(), t.stride.cpu().float()):
        raise TeacherMismatchError(
            f"{teacher_name} strides {t.stride.tolist()} differ from the student's {s.stride.tolist()}. {hint}")
    s_names, t_names = list(getattr(student, "names", [])), list(getattr(teacher, "names", []))
    if s_names and t_names and s_names != t_names:
        print(f"WARNING: {teacher_name} class names {t_names} differ from the student's {s_names} "
              "(same nc, so distillation goes on; check both were trained on the same --data)")


def adopt_teacher_anchors(student, teacher, teacher_name="teacher"):
    """Copy the teacher's anchors into the student in place (outputs are compared anchor by anchor).

    Call after `check_compatible` (same levels, anchors per level and strides). The detection loss
    holds the same buffer, so it uses the new anchors too. Returns True when they changed.
    """
    s, t = detect_head(student), detect_head(teacher)
    new = t.anchors.detach().to(device=s.anchors.device, dtype=s.anchors.dtype)
    if torch.allclose(s.anchors, new, rtol=1e-4, atol=1e-6):
        return False
    px = (new.float().cpu() * t.stride.view(-1, 1, 1).cpu().float()).view(t.nl, -1).round().tolist()
    print(f"Student anchors set to {teacher_name}'s {px} (pixels): outputs are distilled anchor by anchor")
    with torch.no_grad():
        s.anchors.copy_(new)
    return True


@contextmanager
def raw_levels_only(model):
    """Detect in training mode returns its raw levels and skips box decoding nobody reads.

    Only the Detect module's flag changes: it holds 1x1 convs and no BatchNorm, so the teacher's
    weights and statistics stay bit-identical (the rest of the model stays in eval mode).
    """
    head = detect_head(model)
    was_training = head.training
    head.training = True
    try:
        yield
    finally:
        head.training = was_training


@torch.no_grad()
def run_teacher(teacher, imgs, feature_layers=None, forward=None):
    """What the teacher outputs for the batch, as DistillInputs: raw prediction levels, the tapped features
    and (a segmentation teacher) its prototypes, in the teacher's precision.

    The student's autocast is switched off here: a half precision teacher (CUDA) computes in fp16 with
    its own weights, not in the student's bf16 with weights re-cast every batch, and a float teacher
    in float. Half teachers hand over half tensors: the losses upcast one level at a time, so no
    float32 copy of every output lives through the student's backward pass. no_grad (not
    inference_mode) makes ordinary tensors that autograd may save for the student's backward.
    `forward`: the teacher's compiled forward (--compile), else the teacher itself is called.
    """
    x = imgs.to(next(teacher.parameters()).dtype)
    net = forward or teacher
    with torch.autocast(x.device.type, enabled=False), raw_levels_only(teacher):
        raw, feats = net(x, feature_layers=feature_layers or [])
    levels, protos = raw if teacher.task == "segment" else (raw, None)  # train-mode output of the head
    return DistillInputs(list(levels), list(feats), protos)
