"""Mask distillation (distill/mask_terms.py): each model's own mask logits, inside the teacher's boxes."""
import pytest
import torch

from distill.losses import DistillInputs
from distill.mask_terms import MaskDistillation
from models.yolo import Model

NC, NM = 3, 32


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    return Model("yolov5n-seg.yaml", nc=NC).model[-1]


def outputs(seed, batch=2, size=64, obj=4.0):
    """Raw levels and prototypes of a seg model at `size` px; objectness logit `obj` at a few cells."""
    g = torch.Generator().manual_seed(seed)
    levels = []
    for stride in (8, 16, 32):
        lvl = torch.randn(batch, 3, size // stride, size // stride, 5 + NC + NM, generator=g)
        lvl[..., 4] = -8.0
        lvl[:, 0, 1, 1, 4] = obj  # one confident cell per image and level
        levels.append(lvl)
    protos = torch.randn(batch, NM, size // 4, size // 4, generator=g)
    return levels, protos


def test_identical_models_give_zero_and_others_a_positive_loss(head):
    levels, protos = outputs(0)
    term = MaskDistillation(head, NC, T=2.0)
    same, items = term(DistillInputs(levels, protos=protos), DistillInputs(levels, protos=protos))
    assert same.item() == pytest.approx(0.0, abs=1e-7) and set(items) == {"kd_mask"}
    s_levels, s_protos = outputs(1)
    loss, _ = term(DistillInputs(s_levels, protos=s_protos), DistillInputs(levels, protos=protos))
    assert loss.item() > 0


def test_gradient_reaches_coefficients_and_prototypes_of_the_student_only(head):
    t_levels, t_protos = outputs(0)
    s_levels, s_protos = outputs(1)
    s_levels = [lvl.requires_grad_() for lvl in s_levels]
    s_protos.requires_grad_()
    loss, _ = MaskDistillation(head, NC)(DistillInputs(s_levels, protos=s_protos), DistillInputs(t_levels, protos=t_protos))
    loss.backward()
    grad = s_levels[0].grad
    assert grad[..., 5 + NC:].abs().sum() > 0  # mask coefficients learn
    assert grad[..., :5 + NC].abs().sum() == 0  # boxes and scores are other terms' business
    assert s_protos.grad.abs().sum() > 0


def test_only_pixels_inside_the_teachers_boxes_count(head):
    t_levels, t_protos = outputs(0)
    s_levels, s_protos = outputs(1)
    term = MaskDistillation(head, NC)
    base, _ = term(DistillInputs(s_levels, protos=s_protos), DistillInputs(t_levels, protos=t_protos))
    decoded = head.decode([lvl.float() for lvl in t_levels])
    cells = decoded[..., 4] >= 0.1
    x1 = (decoded[..., 0] - decoded[..., 2] / 2)[cells].min().item() / 4  # leftmost box edge, prototype px
    changed = s_protos.clone()
    if int(x1) > 0:
        changed[..., :int(x1)] += 5.0  # left of every teacher box
        moved, _ = term(DistillInputs(s_levels, protos=changed), DistillInputs(t_levels, protos=t_protos))
        assert moved.item() == pytest.approx(base.item(), rel=1e-6)
    changed[...] += 5.0
    everywhere, _ = term(DistillInputs(s_levels, protos=changed), DistillInputs(t_levels, protos=t_protos))
    assert everywhere.item() != pytest.approx(base.item(), rel=1e-3)


def test_per_image_units_and_no_cells_no_loss(head):
    t_levels, t_protos = outputs(0)
    s_levels, s_protos = outputs(1)
    term = MaskDistillation(head, NC)
    one, _ = term(DistillInputs(s_levels, protos=s_protos), DistillInputs(t_levels, protos=t_protos))
    twice = lambda xs: [torch.cat([x, x]) for x in xs]  # noqa: E731
    two, _ = term(DistillInputs(twice(s_levels), protos=torch.cat([s_protos] * 2)),
                  DistillInputs(twice(t_levels), protos=torch.cat([t_protos] * 2)))
    assert two.item() == pytest.approx(one.item(), rel=1e-5)  # the same images twice: the same per-image loss
    quiet_levels, _ = outputs(0, obj=-8.0)
    s_protos.requires_grad_()
    none, items = term(DistillInputs(s_levels, protos=s_protos), DistillInputs(quiet_levels, protos=t_protos))
    assert none.item() == 0.0 and items["kd_mask"].item() == 0.0
    none.backward()  # the graph is kept: a batch without confident cells still backpropagates


def test_temperature_squared_keeps_the_gradient_scale(head):
    t_levels, t_protos = outputs(0)
    s_levels, s_protos = outputs(1)
    norms = []
    for T in (4.0, 8.0):
        p = s_protos.clone().requires_grad_()
        MaskDistillation(head, NC, T=T)(DistillInputs(s_levels, protos=p), DistillInputs(t_levels, protos=t_protos))[0].backward()
        norms.append(p.grad.norm().item())
    assert norms[1] == pytest.approx(norms[0], rel=0.5)  # without T^2 it would shrink 4x
