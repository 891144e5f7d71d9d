"""The frozen teacher: loaded once, checked against the student, run without autograd.

Output distillation compares predictions anchor by anchor, so teacher and student must agree on
classes, anchors and strides; a mismatch is refused before the first batch.
"""
from pathlib import Path

import torch

from models.checkpoint import load_model
from models.yolo import Model
from utils.files import resolve_file


class TeacherMismatchError(ValueError):
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
    model.source = str(Path(weights))
    return model


def detect_head(model):
    return model.model[-1]


def check_compatible(student, teacher, teacher_name="teacher"):
    """Raise TeacherMismatchError naming both values when outputs cannot be compared one to one."""
    s, t = detect_head(student), detect_head(teacher)
    hint = ("Train or pick a teacher on the same dataset (same --data, so the same nc) with the same "
            "anchors (same model YAML anchors, or --noautoanchor for both), or use feature-only "
            "distillation (--d_output 0 --d_feature ...) which needs no matching outputs.")
    if s.nc != t.nc:
        raise TeacherMismatchError(f"{teacher_name} has nc={t.nc} classes but the student has nc={s.nc}. {hint}")
    if (s.nl, s.na) != (t.nl, t.na):
        raise TeacherMismatchError(
            f"{teacher_name} has {t.nl} output levels x {t.na} anchors, the student {s.nl} x {s.na}. {hint}")
    if not torch.equal(s.stride.cpu().float(), t.stride.cpu().float()):
        raise TeacherMismatchError(
            f"{teacher_name} strides {t.stride.tolist()} differ from the student's {s.stride.tolist()}. {hint}")
    s_px = (s.anchors.float().cpu() * s.stride.view(-1, 1, 1).cpu())
    t_px = (t.anchors.float().cpu() * t.stride.view(-1, 1, 1).cpu())
    if not torch.allclose(s_px, t_px, rtol=1e-3, atol=1e-2):
        raise TeacherMismatchError(
            f"{teacher_name} anchors {t_px.view(t.nl, -1).round().tolist()} differ from the student's "
            f"{s_px.view(s.nl, -1).round().tolist()} (pixels). {hint}")


@torch.inference_mode()
def _teacher_forward(teacher, imgs, feature_layers):
    x = imgs.to(next(teacher.parameters()).dtype)
    if feature_layers:
        (_, raw), feats = teacher(x, feature_layers=feature_layers)
    else:
        _, raw = teacher(x)
        feats = []
    return raw, feats


def run_teacher(teacher, imgs, feature_layers=None):
    """Raw prediction levels (and tapped features) of the teacher, as float32 tensors.

    The forward runs under inference_mode (no activations kept); the outputs are cloned outside it
    because autograd may not save inference tensors for the student's backward pass.
    """
    raw, feats = _teacher_forward(teacher, imgs, feature_layers)
    return [r.float().clone() for r in raw], [f.float().clone() for f in feats]
