"""Knowledge distillation for YOLOv5: pure-tensor losses (no trainer needed).

Interface (distill.losses):
    DistillInputs(preds, features)      raw Detect levels [B, na, ny, nx, 5 + nc] (pre-sigmoid)
                                        and tapped feature maps [B, C, H, W] of one network
    DistillLoss.forward(student, teacher) -> (loss, items)
        loss: 0-dim tensor in per-image units, a mean over the batch (the objective multiplies by
              the batch size), so a weight means the same at any batch size or number of GPUs;
        items: dict name -> detached 0-dim tensor (become train/<name> columns).

Methods:
    OutputDistillation(gains=loss_gains(hyp), d_weight=2.0, cls_weighting='teacher_obj', fork_units=False)
        the reference fork's teacher-objectness weighted MSE; items dist_box/dist_obj/dist_cls
    SoftLabelKL(T=4, alpha=1, mode='bernoulli'|'softmax', obj_weighted=True, distill_obj=False, gains=...)
        Hinton KD on class scores with T^2 correction, x gains['cls']; items kd_cls (+ kd_obj)
    FeatureDistillation(student_channels, teacher_channels, loss='mse'|'cosine'|'cwd', tau=1,
                        standardize=False, weight=None -> FEATURE_WEIGHTS[loss])
                        1x1 adapters are its parameters (adapt + loss_of_adapted); item feat
    MultiTeacher(method, mode='average'|'per_teacher')  forward(student, [teacher, ...])

Functions:
    compute_distillation_output_loss(p, t_p, model, d_weight=10) -> (loss, [box, obj, cls])
    output_distillation_terms(p, t_p, cls_weighting) -> unscaled (box, obj, cls)
    average_teachers(list of DistillInputs) -> DistillInputs (outputs only)
    distill.features: build_adapters, standardize_channels, mse/cosine/cwd_feature_loss

Training: distill.objective.DistillationObjective (the task objective + these terms, one call per batch),
built from train_distillation.py's flags by distill.builder.DistillationBuilder.
"""
from distill.features import (build_adapters, cosine_feature_loss, cwd_feature_loss,
                              mse_feature_loss, standardize_channels)
from distill.losses import (DistillInputs, DistillLoss, FeatureDistillation, MultiTeacher,
                            OutputDistillation, SoftLabelKL, average_teachers, bernoulli_kl,
                            compute_distillation_output_loss, loss_gains, output_distillation_terms,
                            softmax_kl)

__all__ = [
    'DistillInputs', 'DistillLoss', 'OutputDistillation', 'SoftLabelKL', 'FeatureDistillation',
    'MultiTeacher', 'average_teachers', 'compute_distillation_output_loss', 'loss_gains',
    'output_distillation_terms', 'bernoulli_kl', 'softmax_kl', 'build_adapters',
    'standardize_channels', 'mse_feature_loss', 'cosine_feature_loss', 'cwd_feature_loss',
]
