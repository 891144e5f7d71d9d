"""Mask distillation for YOLOv5-seg students (issue 29): per-pixel soft masks, at the teacher's objects.

A segmentation head predicts, per anchor cell, nm mask coefficients, and per image nm prototype maps;
a mask's logits are coefficients @ prototypes. The two models' prototypes live in different bases, so
coefficients cannot be compared one to one: each model assembles its OWN mask logits at the same cells,
and the student's per-pixel probabilities learn the teacher's there.
"""
import torch

from distill.losses import DistillLoss, bernoulli_kl
from distill.pseudo import flat_cells
from utils.boxes import xywh2xyxy
from utils.masks import crop_mask

DEFAULT_MASK_CELLS = 64  # teacher cells distilled per image (the most confident): bounds the cost per batch
DEFAULT_MASK_CONF = 0.1  # teacher objectness below which a cell holds no object worth a mask


class MaskDistillation(DistillLoss):
    """Binary KL between the teacher's and the student's mask probabilities inside the teacher's boxes.

    At the teacher's confident cells (sigmoid(t_obj) >= min_conf, the `max_cells` most confident per
    image over all levels), each model's mask logits m = its coefficients @ its prototypes of that image;
    both are cropped to the teacher's box (decoded by `teacher_head`, at prototype resolution):
      L = gain * T^2 * sum_cells w * mean_{pixels in box} KL(Bern(sigmoid(m_t/T)) || Bern(sigmoid(m_s/T)))
              / max(sum_cells w, B),   w = sigmoid(t_obj),
    a mean over the teacher's objects weighted by its objectness, as the soft-label KL's, with a floor of
    one object per image so an image the teacher finds empty does not amplify a stray cell. T^2 keeps
    the gradient's size independent of T. `gain` is the segmentation loss's (v7.0: hyp['box']) times the
    user's weight, so the term is in the units of the mask BCE it imitates. `nc` locates the coefficients
    (after x, y, w, h, obj and nc class scores).
    """

    def __init__(self, teacher_head, nc, T=4.0, gain=1.0, max_cells=DEFAULT_MASK_CELLS, min_conf=DEFAULT_MASK_CONF):
        super().__init__()
        self._head = [teacher_head]  # frozen: not a submodule (no parameters, no state)
        self.nc, self.T, self.gain = nc, float(T), float(gain)
        self.max_cells, self.min_conf = max_cells, min_conf

    def forward(self, student, teacher):
        s_proto, t_proto = student.protos.float(), teacher.protos.detach().float()
        batch, _, mh, _ = s_proto.shape
        cells = self._confident_cells(teacher.preds)
        zero = s_proto.new_zeros(())
        if cells is None:
            return zero + 0.0 * s_proto.sum(), {'kd_mask': zero}  # keeps the graph, adds nothing
        image, w, t_coef, s_coef, boxes = self._gather(cells, student.preds, teacher.preds)
        input_h = teacher.preds[0].shape[2] * float(self._head[0].stride[0])  # P3 rows x its stride
        kl = self._in_box_kl(image, t_coef, s_coef, t_proto, s_proto, boxes, proto_scale=mh / input_h)
        loss = (w * kl).sum() / w.sum().clamp(min=float(batch)) * self.T ** 2 * self.gain
        return loss, {'kd_mask': loss.detach()}

    @torch.no_grad()
    def _confident_cells(self, t_levels):
        """(image, index into the levels' cells) of the teacher's most confident cells, or None if none."""
        scores = flat_cells(t_levels)[..., 4].detach().float().sigmoid()  # [B, N] over all levels
        top, index = scores.topk(min(self.max_cells, scores.shape[1]), dim=1)
        image, slot = torch.nonzero(top >= self.min_conf, as_tuple=True)
        return (image, index[image, slot]) if image.numel() else None

    def _gather(self, cells, s_levels, t_levels):
        """Per selected cell: image, teacher weight, both models' coefficients, the teacher's xyxy box (input px)."""
        image, cell = cells
        first = 5 + self.nc
        t_rows = flat_cells(t_levels)[image, cell].detach().float()
        s_rows = flat_cells(s_levels)[image, cell].float()
        with torch.no_grad():
            decoded = self._head[0].decode([lvl.detach().float() for lvl in t_levels])[image, cell]
        return image, t_rows[:, 4].sigmoid(), t_rows[:, first:], s_rows[:, first:], xywh2xyxy(decoded[:, :4])

    def _in_box_kl(self, image, t_coef, s_coef, t_proto, s_proto, boxes, proto_scale):
        """Mean binary KL at temperature T over each cell's box pixels (its own image's prototypes)."""
        t_logits = torch.einsum('kc,kchw->khw', t_coef, t_proto[image])
        s_logits = torch.einsum('kc,kchw->khw', s_coef, s_proto[image])
        kl = bernoulli_kl(t_logits / self.T, s_logits / self.T)
        inside = crop_mask(torch.ones_like(kl), boxes * proto_scale)
        return (kl * inside).sum((1, 2)) / inside.sum((1, 2)).clamp(min=1.0)
