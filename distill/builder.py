"""From train_distillation.py's flags to the distillation objective (utils/objective.py ObjectiveBuilder).

The trainer calls `prepare_student` before AutoAnchor and the task loss exist (teachers are loaded and
checked, and the student takes their anchors when outputs are distilled anchor by anchor), then `build`
once the loaders are made and the loss gains are scaled.
"""
import torch

from distill.losses import loss_gains
from distill.objective import (DistillationObjective, feature_terms_from, mask_terms_from, output_terms_from,
                              proto_terms_from)
from distill.teacher import TeacherMismatchError, adopt_teacher_anchors, check_compatible, load_teacher
from utils.cli import UserError
from utils.objective import ObjectiveBuilder
from utils.torch_utils import RANK, compiled

NO_METHOD = "no distillation method enabled: keep --d_output or --d_kl, or add --d_feature (or --d_mask/--d_proto)"


def load_checked_teachers(student, device, opt):
    """Every --t_weights teacher, loaded and checked against the student (and against each other)."""
    teachers = []
    for weights in opt.t_weights:
        teacher = load_teacher(weights, cfg=opt.t_cfg or None, device=device)
        name = f"teacher {weights}"
        check_tasks(student, teacher, name, opt)
        if opt.d_output or opt.d_kl or opt.d_mask:
            check_compatible(student, teacher, name)
            if teachers and not torch.allclose(teachers[0].model[-1].anchors.float(),
                                               teacher.model[-1].anchors.float(), rtol=1e-3):
                raise TeacherMismatchError(
                    f"{name} anchors differ from teacher {opt.t_weights[0]}'s: outputs of several teachers are "
                    "compared anchor by anchor; use teachers trained with the same anchors")
        elif teacher.nc != student.nc:
            print(f"WARNING: {name} has nc={teacher.nc}, the student nc={student.nc} (feature distillation only)")
        teachers.append(teacher)
    return teachers


def check_tasks(student, teacher, name, opt):
    """A detection teacher cannot teach masks, nor a detection student learn them: refused before training
    unless only detection terms are asked for."""
    if teacher.task == student.task:
        return
    if student.task == "segment" and (opt.d_mask or opt.d_proto or opt.d_pseudo is not None):
        raise TeacherMismatchError(
            f"{name} is a detection model but the student is a segmentation model: mask distillation, prototype "
            "imitation and pseudo masks need a -seg teacher; give a -seg --t_weights, or --no-d_mask without "
            "--d_proto and --d_pseudo to distil the detection outputs only")
    if student.task == "detect" and (opt.d_mask or opt.d_proto):
        raise TeacherMismatchError(
            f"--d_mask and --d_proto distil masks, but the student is a detection model ({name} is a segmentation "
            "model); train a -seg student (--cfg yolov5n-seg.yaml), or drop --d_mask and --d_proto")


def resolve_mask_flags(student, opt):
    """--d_mask defaults to on when the student segments; --d_mix's second alpha defaults to its first."""
    if opt.d_mask is None:
        opt.d_mask = student.task == "segment"
    if opt.d_mix and len(opt.d_mix) == 1:
        opt.d_mix = [opt.d_mix[0], opt.d_mix[0]]


class DistillationBuilder(ObjectiveBuilder):
    """train_distillation.py: the task objective + the terms its flags ask for, from frozen teachers."""
    script = "train_distillation.py"

    def __init__(self, opt):
        super().__init__(opt)
        if not (opt.d_output or opt.d_kl or opt.d_feature or opt.d_mask is not False or opt.d_proto):
            raise UserError(NO_METHOD)
        if opt.d_mix and not (len(opt.d_mix) <= 2 and all(0 <= a <= 1 for a in opt.d_mix)):
            raise UserError(f"--d_mix {' '.join(map(str, opt.d_mix))}: give ALPHA_DET [ALPHA_SEG], each in [0, 1]")
        if opt.d_pseudo is not None and not (opt.d_output or opt.d_kl):
            raise UserError("--d_pseudo needs teacher outputs of the student's classes: keep --d_output or --d_kl")
        self.teachers = []

    @property
    def distils_outputs(self):
        """Whether a term compares the two models cell by cell (outputs, class scores, masks)."""
        return bool(self.opt.d_output or self.opt.d_kl or self.opt.d_mask)

    def prepare_student(self, student, data, device, resuming):
        """Load the teachers; the student takes their anchors when outputs are compared anchor by anchor."""
        resolve_mask_flags(student, self.opt)
        if not (self.distils_outputs or self.opt.d_feature or self.opt.d_proto):
            raise UserError(NO_METHOD)
        self.teachers = load_checked_teachers(student, device, self.opt)
        if self.opt.t_val and not resuming and RANK in (-1, 0):  # measured once, when the run starts
            from distill.teacher_check import warn_if_teacher_not_better
            warn_if_teacher_not_better(self.teachers, data, self.opt, student.task)
        if not self.distils_outputs:
            return None  # feature terms alone: the student keeps its own anchors (AutoAnchor as usual)
        adopt_teacher_anchors(student, self.teachers[0], f"teacher {self.opt.t_weights[0]}")
        return "the distilled student takes its teacher's anchors"

    def unlabeled_source(self, data):
        """--d_unlabeled ('' = none), else the dataset YAML's `unlabeled:`: the teachers teach on them too."""
        flag = self.opt.d_unlabeled
        source = [p for p in flag if p] if flag is not None else data.get("unlabeled")
        return source or None

    def build(self, task_objective, student, hyp, unlabeled_images):
        opt = self.opt
        if opt.d_pseudo is not None and not unlabeled_images:
            raise UserError(f"--d_pseudo {opt.d_pseudo}: there are no unlabeled images to label; give them with "
                            "--d_unlabeled PATH (or an `unlabeled:` entry in the dataset YAML), or drop --d_pseudo")
        gains = loss_gains(hyp)
        output_terms = output_terms_from(gains, opt.d_output, opt.d_weight, opt.d_kl, opt.d_temperature,
                                         opt.d_alpha, opt.d_multi, fork_units=opt.d_fork_units)
        feature_terms, s_layers, t_layers = [], (), None
        if opt.d_feature:
            feature_terms, s_layers, t_layers = feature_terms_from(
                student, self.teachers, opt.d_feature, opt.d_feature_weight, opt.d_feature_layers,
                opt.t_feature_layers, opt.d_standardize, opt.d_tau)
        mask_terms = (mask_terms_from(student, self.teachers, gains, opt.d_temperature, opt.d_mask_weight)
                      if opt.d_mask else None)
        proto_terms = (proto_terms_from(student, self.teachers, opt.d_proto, opt.d_proto_weight, opt.d_standardize,
                                        opt.d_tau) if opt.d_proto else ())
        objective = DistillationObjective(task_objective, self.teachers, output_terms, feature_terms, s_layers,
                                          t_layers, pseudo_conf=opt.d_pseudo, off_last_epochs=opt.d_off_last,
                                          teacher_forwards=[compiled(t, opt.compile) if opt.compile else None
                                                            for t in self.teachers],
                                          mask_terms=mask_terms, proto_terms=proto_terms,
                                          mix=dict(zip(("detect", "segment"), opt.d_mix or ())))
        return objective.to(next(student.parameters()).device)

