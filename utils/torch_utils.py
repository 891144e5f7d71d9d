"""Torch helpers: devices, seeding, EMA, optimizer groups, LR schedules and DDP plumbing."""
import math
import os
import random
import time
from contextlib import contextmanager
from copy import deepcopy

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from utils.cli import UserError

# Set by torchrun; -1 / 1 when running as a single process.
LOCAL_RANK = int(os.getenv("LOCAL_RANK", -1))
RANK = int(os.getenv("RANK", -1))
WORLD_SIZE = int(os.getenv("WORLD_SIZE", 1))


def select_device(device="", batch_size=0):
    """'' -> first CUDA device if any else CPU; 'cpu'; '0'; '0,1' (DDP picks LOCAL_RANK's device).

    Raises a clear error when CUDA is requested but not available, instead of failing later.
    """
    device = str(device).strip().lower().replace("cuda:", "").replace("none", "")
    if device == "cpu" or (device == "" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if device == "mps":
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device} requested but CUDA is not available; use --device cpu")
    ids = [int(x) for x in device.split(",")] if device else list(range(torch.cuda.device_count()))
    if any(i >= torch.cuda.device_count() for i in ids):
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if len(ids) > 1 and batch_size and batch_size % len(ids):
        raise UserError(f"--batch-size {batch_size} is not a multiple of the GPU count {len(ids)}")
    index = LOCAL_RANK if LOCAL_RANK >= 0 else ids[0]
    return torch.device("cuda", index)


def init_seeds(seed=0, deterministic=False):
    """Seed python, numpy and torch.

    `deterministic` asks torch for deterministic kernels (bit-identical reruns on CUDA, slower);
    otherwise cuDNN may autotune its convolution algorithms (fastest for fixed input shapes).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"


def autocast_dtype(device, amp=True):
    """The mixed-precision dtype for training on `device`: bf16 where the GPU has it, fp16 on other
    CUDA GPUs (needs a GradScaler), None (full fp32) on CPU/MPS or when `amp` is off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_channels_last(module, device):
    """NHWC weights on CUDA, where cuDNN's tensor-core convolutions prefer them; unchanged elsewhere.

    Changes the parameters in place (optimizers and EMA copies made before keep working) and
    returns the module. Call it on the student and on the teacher alike.
    """
    if torch.device(device).type == "cuda":
        module.to(memory_format=torch.channels_last)
    return module


def time_sync():
    """Wall time that waits for queued CUDA work, so timings measure the GPU and not the launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


def is_parallel(model):
    return isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel))


def de_parallel(model):
    """The plain model inside a DDP/DP wrapper."""
    return model.module if is_parallel(model) else model


@contextmanager
def torch_distributed_zero_first(local_rank):
    """Let rank 0 do something first (scan labels, generate data) while the others wait."""
    if local_rank not in (-1, 0):
        dist.barrier()
    yield
    if local_rank == 0:
        dist.barrier()


def smart_optimizer(model, name="SGD", lr=0.01, momentum=0.937, decay=1e-5, extra_modules=()):
    """YOLOv5's three parameter groups: weights with decay, BN weights and biases without.

    `extra_modules` (the objective's trainable parts, e.g. distillation adapters) are grouped the same way.
    Frozen parameters of `extra_modules` stay out; the model's keep YOLOv5's behaviour (all joined).
    """
    decayed, bn_weights, biases = [], [], []
    norm_types = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for owner in (model, *extra_modules):
        for module in owner.modules():
            for pname, p in module.named_parameters(recurse=False):
                if owner is not model and not p.requires_grad:
                    continue
                if pname == "bias":
                    biases.append(p)
                elif pname == "weight" and isinstance(module, norm_types):
                    bn_weights.append(p)
                else:
                    decayed.append(p)
    # Group order as in YOLOv5 (x/lr0 = biases, x/lr1 = decayed weights, x/lr2 = BN weights):
    # warmup ramps group 0 down from warmup_bias_lr.
    if name == "Adam":
        opt = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        opt = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "SGD":
        opt = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    else:
        raise NotImplementedError(f"optimizer {name} not supported (SGD, Adam, AdamW)")
    opt.add_param_group({"params": decayed, "weight_decay": decay})
    opt.add_param_group({"params": bn_weights, "weight_decay": 0.0})
    return opt


def lr_lambda(epochs, lrf, cosine=False):
    """LR multiplier per epoch: linear from 1 to lrf, or a half cosine (YOLOv5's one_cycle)."""
    if cosine:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


class ModelEMA:
    """Exponential moving average of the weights, with YOLOv5's ramp `decay * (1 - exp(-updates / tau))`.

    The ramp keeps early, mostly random weights from dominating the average.
    """

    def __init__(self, model, decay=0.9999, tau=2000, updates=0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        """ema = d * ema + (1 - d) * model for every float tensor (BN statistics included).

        One fused foreach call over all tensors instead of two small kernels per tensor.
        """
        self.updates += 1
        d = self.decay(self.updates)
        msd = de_parallel(model).state_dict()
        ema_tensors, model_tensors = [], []
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                ema_tensors.append(v)
                model_tensors.append(msd[k].detach())
        torch._foreach_lerp_(ema_tensors, model_tensors, 1.0 - d)

    def update_attr(self, model, include=("yaml", "nc", "hyp", "names")):
        for k in include:
            if hasattr(model, k):
                setattr(self.ema, k, getattr(model, k))


class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs."""

    def __init__(self, patience=100):
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.patience = patience or float("inf")

    def __call__(self, epoch, fitness):
        if fitness >= self.best_fitness:
            self.best_epoch, self.best_fitness = epoch, fitness
        stop = (epoch - self.best_epoch) >= self.patience
        if stop:
            print(f"Stopping early: no improvement in the last {self.patience} epochs "
                  f"(best epoch {self.best_epoch}). Raise --patience to train longer.")
        return stop

    def state_dict(self):
        """Saved in last.pt, so a resumed run counts patience from the same best epoch."""
        return {"best_fitness": float(self.best_fitness), "best_epoch": int(self.best_epoch)}

    def load_state_dict(self, state):
        self.best_fitness, self.best_epoch = float(state["best_fitness"]), int(state["best_epoch"])


def compiled(module, mode):
    """`torch.compile(module, mode=mode)`, or the module itself when `mode` is falsy (no --compile).

    `mode` True (runs saved when --compile was a plain switch) means torch.compile's default mode."""
    if not mode:
        return module
    return torch.compile(module, mode=None if mode in (True, "default") else mode)
