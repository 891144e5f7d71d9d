"""The fast paths of the training step give the results of the plain ones (issue 15).

Each fast path is checked against the formula it replaced, written out here: foreach EMA vs a
per-tensor mul_/add_, cached build_targets gains vs gains rebuilt per call, device-side loss
accumulation vs the mean of the per-step items. Exact resume is tests/test_train.py's job.
"""
import csv
import math
from copy import deepcopy

import pytest
import torch

import train
from conftest import tiny_train_args
from models.yolo import Model
from utils.loss import ComputeLoss
from utils.torch_utils import ModelEMA, autocast_dtype, de_parallel, init_seeds, to_channels_last
from utils.trainer import Trainer

HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0, label_smoothing=0.0)


def tiny_model(nc=3, seed=0):
    torch.manual_seed(seed)
    model = Model("yolov5n.yaml", nc=nc)
    model.hyp = dict(HYP)
    return model


def reference_ema_update(ema_model, model, d):
    """The per-tensor update that ModelEMA did before the foreach version."""
    msd = model.state_dict()
    for k, v in ema_model.state_dict().items():
        if v.dtype.is_floating_point:
            v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


def test_foreach_ema_matches_per_tensor_update():
    model = tiny_model()
    ema = ModelEMA(model)
    reference = deepcopy(ema.ema)
    model.train()
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model(torch.rand(2, 3, 64, 64))  # moves the BatchNorm running statistics too
        ema.update(model)
        reference_ema_update(reference, model, ema.decay(ema.updates))
    assert ema.updates == 5
    got, want = ema.ema.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), rtol=1e-5, atol=1e-7), k
    # the average moved: a no-op update would fail the comparison with the model below
    assert not torch.allclose(got["model.0.conv.weight"], ModelEMA(tiny_model()).ema.state_dict()["model.0.conv.weight"])
    bn = "model.0.bn.running_mean"
    assert not torch.equal(got[bn], torch.zeros_like(got[bn]))  # buffers are averaged as well


class PerCallGains(ComputeLoss):
    """build_targets with the gains rebuilt for every call, as before the cache."""

    def grid_gains(self, preds):
        gains = []
        for p in preds:
            gain = torch.ones(7, device=self.device)
            gain[2:6] = torch.tensor(p.shape, device=self.device)[[3, 2, 3, 2]].float()  # the old formula
            gains.append(gain)
        return torch.stack(gains)


def random_targets(n, batch, nc, seed):
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(n, 2, generator=g) * 0.4 + 0.02
    xy = torch.rand(n, 2, generator=g) * (1 - wh) + wh / 2
    return torch.cat((torch.randint(0, batch, (n, 1), generator=g).float(),
                      torch.randint(0, nc, (n, 1), generator=g).float(), xy, wh), 1)


@pytest.mark.parametrize("shape", [(64, 64), (96, 64), (64, 128)])
def test_cached_grid_gains_give_the_same_loss(shape):
    model = tiny_model().train()
    fast, plain = ComputeLoss(model), PerCallGains(model)
    for seed, size in enumerate([shape, (32, 32), shape]):  # a size change and a return to a cached one
        preds = model(torch.rand(2, 3, *size))
        targets = random_targets(6, 2, 3, seed)
        (l1, i1), (l2, i2) = fast(preds, targets), plain(preds, targets)
        assert torch.equal(l1, l2) and torch.equal(i1, i2)
        for a, b in zip(fast.build_targets(preds, targets), plain.build_targets(preds, targets)):
            for x, y in zip(a, b):
                if isinstance(x, tuple):
                    assert all(torch.equal(u, v) for u, v in zip(x, y))
                else:
                    assert torch.equal(x, y)
    # one host-to-device copy per grid geometry: the same tensor is handed out again
    preds = model(torch.rand(1, 3, *shape))
    assert fast.grid_gains(preds) is fast.grid_gains(preds)
    assert len(fast._grid_gains) == 2
    assert fast.grid_gains(preds)[0].tolist() == [1, 1, shape[1] / 8, shape[0] / 8, shape[1] / 8, shape[0] / 8, 1]


def test_init_seeds_deterministic_only_when_asked():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    try:
        init_seeds(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        init_seeds(0)
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
        assert torch.backends.cudnn.benchmark  # autotuned convolutions for speed
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1:]


def test_no_mixed_precision_or_layout_change_on_cpu():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, amp=True) is None and autocast_dtype(cpu, amp=False) is None
    model = tiny_model()
    w = model.model[0].conv.weight
    assert to_channels_last(model, cpu) is model and w.is_contiguous()


def _read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_epoch_losses_are_the_mean_of_the_step_items(tiny_data, tmp_path):
    opt = train.prepare_run(train.parse_opt(tiny_train_args(tiny_data, tmp_path, "acc", epochs=1,
                                                            extra=["--noval", "--batch-size", "4"])))
    trainer = Trainer(opt)
    steps, batches = [], []
    plain_step = trainer._train_step

    def recording_step(batch):
        items = plain_step(batch)
        steps.append(items.clone())
        return items

    trainer._train_step = recording_step
    trainer.batch_hook = lambda i, n: batches.append((i, n))
    trainer.train()
    assert trainer.amp_dtype is None and not trainer.scaler.is_enabled()  # no GradScaler without AMP
    assert trainer.forward is trainer.model  # no --compile
    assert len(steps) == len(batches) == 4 and [i for i, _ in batches] == [0, 1, 2, 3]
    assert all(s.device == trainer.device for s in steps)  # items stay where the loss was computed
    mean = torch.stack(steps).mean(0).tolist()
    row = _read_rows(tmp_path / "acc" / "results.csv")[0]
    logged = [float(row[f"train/{k}"]) for k in ("box_loss", "obj_loss", "cls_loss")]
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(logged, mean)), (logged, mean)


def test_compile_wraps_only_the_forward(tiny_data, tmp_path):
    """--compile: checkpoints keep the plain model's state-dict keys (no `_orig_mod.` prefix)."""
    opt = train.prepare_run(train.parse_opt(tiny_train_args(tiny_data, tmp_path, "c", epochs=1,
                                                            extra=["--compile", "--noautoanchor"])))
    trainer = Trainer(opt)
    trainer._setup()  # torch.compile is lazy: nothing is compiled until the first forward
    assert trainer.forward is not trainer.model and trainer.forward._orig_mod is trainer.model
    ckpt = trainer._checkpoint(0, 0.0)
    keys = set(Model("yolov5n.yaml", nc=trainer.nc).state_dict())
    assert set(ckpt["train_model"]) == keys and set(ckpt["model"]) == keys
    assert set(de_parallel(trainer.model).state_dict()) == keys


@pytest.mark.slow
def test_compiled_training_runs(tiny_data, tmp_path):
    results = train.main(train.parse_opt(tiny_train_args(tiny_data, tmp_path, "compiled", epochs=1,
                                                         extra=["--compile", "--noval"])))
    assert all(math.isfinite(x) for x in results)
