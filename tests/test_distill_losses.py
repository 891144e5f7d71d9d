"""Distillation losses on tiny hand-made tensors; expected values are worked out here by hand."""
import math

import pytest
import torch
import torch.nn as nn

from distill.losses import loss_gains
from distill import (DistillInputs, FeatureDistillation, MultiTeacher, OutputDistillation,
                     SoftLabelKL, average_teachers, build_adapters, compute_distillation_output_loss,
                     cosine_feature_loss, cwd_feature_loss, mse_feature_loss, standardize_channels)

HYP = {'box': 0.05, 'obj': 1.0, 'cls': 0.5}
LN3 = math.log(3.0)  # sigmoid(ln 3) = 3 / (1 + 3) = 0.75 exactly


class FakeModel(nn.Module):
    """Stands in for the student: has a parameter and the `hyp` dict the trainer attaches."""

    def __init__(self, hyp):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.hyp = dict(hyp)


def hand_made_pair(nc=2):
    """1 level, B=1, na=1, 1x2 grid. Teacher objectness logits 0 and ln3 -> weights 0.5, 0.75."""
    t = torch.zeros(1, 1, 1, 2, 5 + nc)
    t[0, 0, 0, 1, 4] = LN3
    s = torch.zeros(1, 1, 1, 2, 5 + nc)
    s[0, 0, 0, 0, 0] = 1.0          # cell 0: box error (1, 0, 0, 0)
    s[0, 0, 0, 0, 4] = 1.0          # cell 0: obj error 1 - 0 = 1
    s[0, 0, 0, 1, 1] = 2.0          # cell 1: box error (0, 2, 0, 0)
    s[0, 0, 0, 1, 4] = LN3 + 2.0    # cell 1: obj error 2
    s[0, 0, 0, 0, 5] = 2.0          # cell 0: class errors (2, 0) (ignored when nc == 1)
    if nc > 1:
        s[0, 0, 0, 1, 6] = 1.0      # cell 1: class errors (0, 1)
    return s, t


# ----------------------------------------------------------------------------------- output KD
def test_output_loss_matches_hand_computation():
    s, t = hand_made_pair(nc=2)
    loss, parts = compute_distillation_output_loss([s], [t], FakeModel(HYP), d_weight=10)
    # box: squared errors 1 (cell 0, w=0.5) and 4 (cell 1, w=0.75) among 2 cells x 4 channels
    #      -> (0.5 * 1 + 0.75 * 4) / 8 = 3.5 / 8 = 0.4375; x box gain 0.05 = 0.021875
    # obj: squared errors 1 (w=0.5) and 4 (w=0.75) among 2 cells -> 3.5 / 2 = 1.75; x 1.0 = 1.75
    # cls: squared errors 4 (cell 0, w=0.5) and 1 (cell 1, w=0.75) among 2 x 2 elements
    #      -> (2 + 0.75) / 4 = 0.6875; x cls gain 0.5 = 0.34375
    # total: (0.021875 + 1.75 + 0.34375) * d_weight 10 = 2.115625 * 10 = 21.15625
    assert loss.item() == pytest.approx(21.15625, rel=1e-6)
    assert parts.tolist() == pytest.approx([0.21875, 17.5, 3.4375], rel=1e-6)


def test_output_loss_single_class_drops_class_term():
    s, t = hand_made_pair(nc=1)
    loss, parts = compute_distillation_output_loss([s], [t], FakeModel(HYP), d_weight=10)
    # same box and obj terms as above, class error of 4 in cell 0 is ignored:
    # (0.021875 + 1.75) * 10 = 17.71875
    assert parts[2].item() == 0.0
    assert loss.item() == pytest.approx(17.71875, rel=1e-6)


def test_output_loss_sums_levels_and_is_zero_for_identical_outputs():
    s, t = hand_made_pair()
    model = FakeModel(HYP)
    one, _ = compute_distillation_output_loss([s], [t], model)
    two, _ = compute_distillation_output_loss([s, s], [t, t], model)
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-6)
    same, _ = compute_distillation_output_loss([t.clone()], [t], model)
    assert same.item() == 0.0


def test_output_loss_gradient_reaches_student_only():
    s, t = hand_made_pair()
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss, _ = compute_distillation_output_loss([s], [t], FakeModel(HYP))
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_output_distillation_per_image_units_and_fork_units():
    s, t = hand_made_pair()
    s2, t2 = torch.cat([s, s]), torch.cat([t, t])   # two identical images: same means
    per_image = OutputDistillation(loss_gains(HYP), d_weight=10)
    loss, items = per_image(DistillInputs([s2]), DistillInputs([t2]))
    # per image: the same value at batch 1 and 2 (the trainer multiplies by B like the detection loss)
    one, _ = per_image(DistillInputs([s]), DistillInputs([t]))
    assert loss.item() == pytest.approx(21.15625, rel=1e-6) and one.item() == pytest.approx(21.15625, rel=1e-6)
    assert list(items) == ['dist_box', 'dist_obj', 'dist_cls']
    assert sum(v.item() for v in items.values()) == pytest.approx(loss.item(), rel=1e-6)
    assert all(not v.requires_grad for v in items.values())
    # the reference fork adds 21.15625 once per batch; fork units return L / B so that x B gives it
    fork, _ = OutputDistillation(loss_gains(HYP), d_weight=10, fork_units=True)(DistillInputs([s2]), DistillInputs([t2]))
    assert fork.item() * 2 == pytest.approx(21.15625, rel=1e-6)


def test_output_distillation_upcasts_half_teacher_levels():
    s, t = hand_made_pair()
    full, _ = OutputDistillation(loss_gains(HYP), d_weight=10)(DistillInputs([s]), DistillInputs([t]))
    half, _ = OutputDistillation(loss_gains(HYP), d_weight=10)(DistillInputs([s]), DistillInputs([t.half()]))
    assert half.dtype == torch.float32 and half.item() == pytest.approx(full.item(), rel=1e-3)


def test_output_distillation_takes_its_gains_at_construction_and_owns_no_weights():
    s, t = hand_made_pair()
    hyp = dict(HYP)
    method = OutputDistillation(loss_gains(hyp), d_weight=1)
    assert len(method.state_dict()) == 0 and len(list(method.parameters())) == 0
    before, _ = method(DistillInputs([s]), DistillInputs([t]))
    hyp.update(box=0.0, obj=0.0, cls=1.0)   # a later change of hyp does not reach a built term
    assert method(DistillInputs([s]), DistillInputs([t]))[0].item() == before.item()
    only_cls = OutputDistillation(loss_gains(hyp), d_weight=1)(DistillInputs([s]), DistillInputs([t]))[0]
    assert only_cls.item() == pytest.approx(0.6875, rel=1e-6)


def test_output_distillation_unweighted_class_option():
    s, t = hand_made_pair()
    gains = loss_gains({'box': 0.0, 'obj': 0.0, 'cls': 1.0})
    loss, _ = OutputDistillation(gains, d_weight=1, cls_weighting='none')(
        DistillInputs([s]), DistillInputs([t]))
    # class squared errors 4 and 1 without weights, over 4 elements: 5 / 4
    assert loss.item() == pytest.approx(1.25, rel=1e-6)
    with pytest.raises(ValueError):
        OutputDistillation(gains, cls_weighting='student')


# ------------------------------------------------------------------------------ soft-label KD
def kd_pair(nc=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(2, 1, 2, 2, 5 + nc, generator=g)
    s = torch.randn(2, 1, 2, 2, 5 + nc, generator=g)
    return s, t


def test_kl_zero_for_equal_logits_and_positive_otherwise():
    s, t = kd_pair()
    kd = SoftLabelKL(T=2.0, distill_obj=True)
    zero, items = kd(DistillInputs([t.clone()]), DistillInputs([t]))
    assert zero.item() == pytest.approx(0.0, abs=1e-7)
    assert list(items) == ['kd_cls', 'kd_obj']
    pos, items = kd(DistillInputs([s]), DistillInputs([t]))
    assert pos.item() > 0 and items['kd_cls'] > 0 and items['kd_obj'] > 0


def test_kl_gradient_matches_closed_form_with_t_squared():
    # d/ds KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))) = (sigmoid(s/T) - sigmoid(t/T)) / T,
    # so with the T^2 factor, weight w = sigmoid(t_obj), the mean over 3 classes and the weighted
    # mean over the teacher's objects (sum of w over the 8 cells, floored at 1 per image, 2 here):
    # grad_c = alpha * T^2 * w * (sigmoid(s_c/T) - sigmoid(t_c/T)) / T / (max(sum w, 2) * 3)
    s, t = kd_pair()
    w = t[..., 4:5].sigmoid()
    assert w.sum() > 2
    for T in (1.0, 3.0):
        sg = s.clone().requires_grad_(True)
        loss, _ = SoftLabelKL(T=T, alpha=0.5)(DistillInputs([sg]), DistillInputs([t]))
        loss.backward()
        expected = 0.5 * T * w * ((s[..., 5:] / T).sigmoid() - (t[..., 5:] / T).sigmoid()) / (w.sum() * 3)
        assert torch.allclose(sg.grad[..., 5:], expected, atol=1e-6)
        assert sg.grad[..., :5].abs().sum() == 0   # only class logits are distilled


def test_kl_is_a_mean_over_the_teachers_objects_not_over_cells():
    # The same objects on a 4x larger, otherwise empty map: a mean over cells would shrink the
    # term 4x (sparse data, e.g. small defects); a mean over the teacher's objects keeps it.
    s, t = kd_pair()
    t[..., 4] = 8.0  # every cell is a confident teacher object
    big_s, big_t = torch.zeros(2, 1, 4, 4, 8), torch.zeros(2, 1, 4, 4, 8)
    big_t[..., 4] = -30.0  # background: weight ~0
    big_s[:, :, :2, :2], big_t[:, :, :2, :2] = s, t
    kd = SoftLabelKL(T=2.0)
    small = kd(DistillInputs([s]), DistillInputs([t]))[0].item()
    assert kd(DistillInputs([big_s]), DistillInputs([big_t]))[0].item() == pytest.approx(small, rel=1e-5)
    # a level where the teacher sees (almost) nothing is not amplified: the object count floors at
    # one per image
    faint = t.clone()
    faint[..., 4] = -8.0  # sum of weights 8 * 3e-4 << 2 images
    per_cell = SoftLabelKL(T=2.0, obj_weighted=False)(DistillInputs([s]), DistillInputs([faint]))[0].item()
    assert kd(DistillInputs([s]), DistillInputs([faint]))[0].item() < 0.01 * per_cell


def test_kl_t_squared_keeps_gradient_scale_across_temperatures():
    # small logit gaps: the soft gradient alone shrinks like 1/T^2; T^2 cancels that
    t = torch.zeros(1, 1, 1, 1, 7)
    t[..., 4] = 10.0  # confident teacher cell, weight ~1
    s = t.clone()
    s[..., 5:] += torch.tensor([0.1, -0.1])
    grads = []
    for T in (5.0, 20.0):
        sg = s.clone().requires_grad_(True)
        SoftLabelKL(T=T)(DistillInputs([sg]), DistillInputs([t]))[0].backward()
        grads.append(sg.grad[..., 5:].flatten())
    assert torch.allclose(grads[0], grads[1], rtol=0.02)


def test_kl_takes_the_class_gain_of_the_detection_loss():
    s, t = kd_pair()
    plain = SoftLabelKL(T=2.0)(DistillInputs([s]), DistillInputs([t]))[0]
    scaled = SoftLabelKL(T=2.0, gains=loss_gains(HYP))(DistillInputs([s]), DistillInputs([t]))[0]  # cls 0.5
    assert scaled.item() == pytest.approx(0.5 * plain.item(), rel=1e-6)


def test_kl_objectness_weighting_alpha_and_single_class():
    s, t = kd_pair()
    t_bg = t.clone()
    t_bg[..., 4] = -30.0   # teacher sees background everywhere -> weight ~0
    assert SoftLabelKL()(DistillInputs([s]), DistillInputs([t_bg]))[0].item() < 1e-9
    one = SoftLabelKL(alpha=1.0)(DistillInputs([s]), DistillInputs([t]))[0]
    three = SoftLabelKL(alpha=3.0)(DistillInputs([s]), DistillInputs([t]))[0]
    assert three.item() == pytest.approx(3 * one.item(), rel=1e-6)
    s1, t1 = kd_pair(nc=1)
    assert SoftLabelKL()(DistillInputs([s1]), DistillInputs([t1]))[0].item() == 0.0


def test_softmax_mode_ignores_shared_shift_of_class_logits():
    s, t = kd_pair()
    kd = SoftLabelKL(mode='softmax', T=2.0)
    base = kd(DistillInputs([s]), DistillInputs([t]))[0]
    shifted = s.clone()
    shifted[..., 5:] += 4.0   # softmax is invariant to adding a constant to every class logit
    assert kd(DistillInputs([shifted]), DistillInputs([t]))[0].item() == pytest.approx(base.item(), rel=1e-5)
    assert base.item() > 0
    with pytest.raises(ValueError):
        SoftLabelKL(mode='hinge')


# ------------------------------------------------------------------------ feature distillation
def test_cwd_matches_hand_computation():
    t = torch.tensor([[[[0.0, 0.0], [0.0, LN3]]]])   # exp -> 1, 1, 1, 3: softmax 1/6, 1/6, 1/6, 1/2
    s = torch.zeros(1, 1, 2, 2)                      # uniform 1/4 each
    # KL = 3 * (1/6) * ln((1/6) / (1/4)) + (1/2) * ln((1/2) / (1/4))
    #    = 0.5 * ln(2/3) + 0.5 * ln(2) = 0.5 * ln(4/3)
    assert cwd_feature_loss(s, t, tau=1.0).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # tau = 2: t/2 -> exp 1, 1, 1, sqrt(3); p = (1, 1, 1, sqrt3) / (3 + sqrt3); KL = sum p ln(4p)
    z = 3 + math.sqrt(3)
    kl = 3 * (1 / z) * math.log(4 / z) + (math.sqrt(3) / z) * math.log(4 * math.sqrt(3) / z)
    assert cwd_feature_loss(s, t, tau=2.0).item() == pytest.approx(4 * kl, rel=1e-5)  # float32
    assert cwd_feature_loss(t, t, tau=2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_cwd_averages_over_images_and_channels():
    t = torch.tensor([[[[0.0, 0.0], [0.0, LN3]]]])
    s = torch.zeros(1, 1, 2, 2)
    t4 = torch.cat([torch.cat([t, t.clone()], 1)] * 2)     # 2 images x 2 identical channels
    s4 = torch.zeros(2, 2, 2, 2)
    assert cwd_feature_loss(s4, t4).item() == pytest.approx(cwd_feature_loss(s, t).item(), rel=1e-6)


def test_mse_and_cosine_basic_properties():
    t = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    assert mse_feature_loss(torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)).item() == 1.0
    assert mse_feature_loss(t, t).item() == 0.0
    assert cosine_feature_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_feature_loss(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert cosine_feature_loss(-t, t).item() == pytest.approx(2.0, rel=1e-6)


def test_standardize_channels_uses_batch_statistics_per_channel():
    x = 5.0 + 3.0 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    z = standardize_channels(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    # PKD: statistics over the batch keep an image's relative strength (a per-image norm erases it)
    strong = torch.cat([x[:1], 10.0 * x[:1]])
    zs = standardize_channels(strong)
    assert zs[1].std() > 5 * zs[0].std()


def test_build_adapters_map_channels():
    adapters = build_adapters([8, 16], [32, 16])
    x8, x16 = torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)
    assert adapters[0](x8).shape == (1, 32, 4, 4)
    assert torch.equal(adapters[1](x16), x16)          # equal channels start as the identity
    assert adapters[1].weight.requires_grad            # ... but stay learnable
    fixed = build_adapters([16], [16], learnable_when_equal=False)
    assert isinstance(fixed[0], nn.Identity)
    with pytest.raises(ValueError):
        build_adapters([8], [8, 16])


@pytest.mark.parametrize('loss', ['mse', 'cosine', 'cwd'])
def test_feature_distillation_zero_for_identical_features(loss):
    f = [torch.randn(1, 4, 4, 4), torch.randn(1, 8, 2, 2)]
    fd = FeatureDistillation([4, 8], [4, 8], loss=loss, tau=2.0)
    value, items = fd(DistillInputs(features=f), DistillInputs(features=[x.clone() for x in f]))
    assert value.item() == pytest.approx(0.0, abs=1e-6) and list(items) == ['feat']


def test_feature_distillation_trains_adapters_and_student_only():
    s = [torch.randn(2, 4, 4, 4, requires_grad=True)]
    t = [torch.randn(2, 8, 4, 4, requires_grad=True)]
    fd = FeatureDistillation([4], [8], loss='mse', weight=2.0)
    assert 'adapters.0.weight' in fd.state_dict()
    loss, _ = fd(DistillInputs(features=s), DistillInputs(features=t))
    loss.backward()
    assert s[0].grad is not None and fd.adapters[0].weight.grad is not None
    assert t[0].grad is None
    with pytest.raises(ValueError):
        fd(DistillInputs(features=s), DistillInputs(features=[torch.randn(2, 8, 2, 2)]))


def test_feature_distillation_standardize_ignores_teacher_channel_scale():
    g = torch.Generator().manual_seed(3)
    s, t = [torch.randn(1, 4, 3, 3, generator=g)], [torch.randn(1, 4, 3, 3, generator=g)]
    fd = FeatureDistillation([4], [4], loss='mse', standardize=True)
    base = fd(DistillInputs(features=s), DistillInputs(features=t))[0]
    rescaled = fd(DistillInputs(features=s), DistillInputs(features=[5.0 * t[0] + 2.0]))[0]
    assert rescaled.item() == pytest.approx(base.item(), rel=1e-4)
    raw = FeatureDistillation([4], [4], loss='mse')
    assert raw(DistillInputs(features=s), DistillInputs(features=[5.0 * t[0] + 2.0]))[0] > base


# ------------------------------------------------------------------------------ multi-teacher
def test_multi_teacher_average_and_per_teacher(capsys):
    s, t1 = kd_pair(seed=1)
    _, t2 = kd_pair(seed=2)
    kd = SoftLabelKL(T=2.0)
    student, teachers = DistillInputs([s]), [DistillInputs([t1]), DistillInputs([t2])]
    avg, _ = MultiTeacher(kd, 'average')(student, teachers)
    assert avg.item() == pytest.approx(kd(student, DistillInputs([(t1 + t2) / 2]))[0].item(), rel=1e-6)
    mean_loss, items = MultiTeacher(kd, 'per_teacher')(student, teachers)
    each = [kd(student, t)[0].item() for t in teachers]
    assert mean_loss.item() == pytest.approx(sum(each) / 2, rel=1e-6)
    assert items['kd_cls'].item() == pytest.approx(sum(each) / 2, rel=1e-6)
    single, _ = MultiTeacher(kd, 'per_teacher')(student, DistillInputs([t1]))
    assert single.item() == pytest.approx(each[0], rel=1e-6)
    capsys.readouterr()
    old = MultiTeacher(kd, 'sum')  # deprecated name, same meaning as before: per_teacher
    assert old.mode == 'per_teacher' and 'deprecated' in capsys.readouterr().out
    with pytest.raises(ValueError, match="--d_multi"):
        MultiTeacher(kd, 'max')


def test_average_teachers_averages_outputs_and_leaves_features_alone():
    a = DistillInputs([torch.zeros(1, 1, 1, 1, 6)], [torch.zeros(1, 2, 2, 2)])
    b = DistillInputs([torch.ones(1, 1, 1, 1, 6).half()], [torch.full((1, 4, 2, 2), 3.0)])  # other width
    mean = average_teachers([a, b])
    assert torch.equal(mean.preds[0], torch.full((1, 1, 1, 1, 6), 0.5))
    assert len(mean.features) == 0  # features stay per teacher, with their own adapters
