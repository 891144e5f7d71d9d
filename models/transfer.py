"""Transfer learning: which pretrained tensors a newly built model takes (--weights with --cfg).

Tensors whose names and shapes match are taken as they are. Between a detection and a
segmentation model (`--weights yolov5n.pt --cfg yolov5n-seg.yaml`, or back) the head convs differ
only by the mask-coefficient rows: each anchor's box, objectness and class rows are taken, the
mask rows keep the new model's initialisation, and Proto (segmentation only) is left as built.
"""


def transferable_state(pretrained, model, keep_anchors=True):
    """Tensors of `pretrained` to load into `model` with `load_state_dict(..., strict=False)`.

    `keep_anchors=False` leaves the new model's anchors (set on purpose: hyp `anchors`, or a --cfg
    whose anchors differ from the checkpoint's).
    """
    own, state = model.state_dict(), pretrained.state_dict()
    keep = {k: v for k, v in state.items()
            if k in own and v.shape == own[k].shape and (keep_anchors or 'anchors' not in k)}
    for k, rows in _head_rows(pretrained, model, own, state).items():
        keep.setdefault(k, rows)
    return keep


def _head_rows(pretrained, model, own, state):
    """Head conv weights/biases of `model` with the box, objectness and class rows of each anchor
    taken from `pretrained` when the two heads differ only in their extra (mask) outputs."""
    src, dst = pretrained.model[-1], model.model[-1]
    same_layout = len(pretrained.model) == len(model.model) and (src.nc, src.na) == (dst.nc, dst.na)
    if not same_layout or src.no == dst.no:
        return {}
    n = 5 + dst.nc  # x, y, w, h, obj, classes: the rows both heads share, at the start of each anchor
    prefix = f'model.{len(model.model) - 1}.m.'
    out = {}
    for k, target in own.items():
        v = state.get(k)
        if not k.startswith(prefix) or v is None or v.shape[1:] != target.shape[1:]:
            continue  # a conv fed by other channels: nothing fits
        rows = target.detach().clone().view(dst.na, dst.no, -1)  # weight [na*no, c, 1, 1] -> [na, no, c]
        rows[:, :n] = v.detach().view(src.na, src.no, -1)[:, :n].to(rows)
        out[k] = rows.view_as(target)
    return out
