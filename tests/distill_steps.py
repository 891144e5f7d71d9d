"""Distillation training steps on a fixed batch, through the Trainer's own step, gradient sync and DDP code.

Imported by tests/test_distillation.py for single-process runs, and run as
    python -m torch.distributed.run --nproc_per_node 2 tests/distill_steps.py OUT_DIR TEACHER.pt GLOBAL_BATCH
for two gloo ranks (each rank takes its slice of the global batch and writes OUT_DIR/rank<r>.pt).
The batch is a few distinct images repeated, so that BatchNorm sees the same statistics in any
slice that holds every distinct image once or more: per-image content is identical at any batch size.
"""
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

DISTINCT, NC, IMGSZ = 4, 8, 64


def fixed_batch(batch):
    """`batch` images: DISTINCT random images repeated, one box each; targets [img, cls, x, y, w, h]."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(DISTINCT, 3, IMGSZ, IMGSZ, generator=g)
    boxes = torch.tensor([[i % NC, 0.3 + 0.1 * i, 0.5, 0.3, 0.4] for i in range(DISTINCT)])
    repeats = batch // DISTINCT
    imgs = base.repeat(repeats, 1, 1, 1)
    index = torch.arange(batch, dtype=torch.float32)[:, None]
    targets = torch.cat([index, boxes.repeat(repeats, 1)], 1)
    return imgs, targets


def rank_slice(imgs, targets, rank, world):
    n = imgs.shape[0] // world
    keep = (targets[:, 0] >= rank * n) & (targets[:, 0] < (rank + 1) * n)
    t = targets[keep].clone()
    t[:, 0] -= rank * n
    return imgs[rank * n:(rank + 1) * n], t


def make_trainer(teacher, flags=("--d_kl", "--d_feature", "cwd")):
    """A Trainer holding what its step, gradient sync and DDP wrapping use: student, objective, optimizer,
    built in the order Trainer._setup builds them."""
    import train_distillation
    from distill.builder import DistillationBuilder
    from models.yolo import Model
    from utils.files import yaml_load
    from utils.loss import ComputeLoss
    from utils.objective import DetectionObjective
    from utils.torch_utils import RANK
    from utils.trainer import Trainer

    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=NC)
    model.hyp = yaml_load(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")
    model.names = [f"c{i}" for i in range(NC)]  # the test teachers' names
    opt = train_distillation.build_parser().parse_args(["--t_weights", str(teacher), *flags])
    builder = DistillationBuilder(opt)
    t = Trainer(Namespace(save_dir="unused", sync_bn=False, amp=False), builder)
    t.device, t.cuda, t.model = torch.device("cpu"), False, model
    builder.prepare_student(model, None, t.device, resuming=False)
    t.compute_loss = ComputeLoss(model)
    torch.manual_seed(100 + max(RANK, 0))  # as the trainer: every rank draws other adapter weights
    t.objective = builder.build(DetectionObjective(t.compute_loss), model, model.hyp, unlabeled_images=0)
    adapters = [p for m in t.objective.trainable_modules() for p in m.parameters()]
    t.optimizer = torch.optim.SGD(list(model.parameters()) + adapters, lr=0.05)
    t.scaler, t.amp_dtype = torch.amp.GradScaler("cuda", enabled=False), None  # CPU: no autocast
    t._wrap_ddp()
    t.forward = t.model  # as Trainer._setup without --compile: the (DDP-wrapped) model
    return t


def objective_parameters(t):
    return [p for m in t.objective.trainable_modules() for p in m.parameters()]


def student_grad(t):
    return torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None])


def run_steps(teacher, global_batch, rank=0, world=1, steps=2):
    """Gradient norms of the detection and distillation terms alone, and the adapters after `steps` SGD steps."""
    from utils.objective import Batch
    t = make_trainer(teacher)
    batch = Batch(*rank_slice(*fixed_batch(global_batch), rank, world))
    sgd = t.optimizer
    out = {}
    for step in range(steps):
        sgd.zero_grad()
        t.objective.active = False  # detection alone
        t._train_step(batch)
        g_det = student_grad(t)
        sgd.zero_grad()
        t.objective.active = True  # detection + distillation
        t._train_step(batch)
        g_dist = student_grad(t) - g_det
        if step == 0:
            out.update(det_norm=g_det.norm().item(), dist_norm=g_dist.norm().item(),
                       adapter_grad=[p.grad.clone() for p in objective_parameters(t)])
        sgd.step()
    out["adapters"] = {k: v.clone() for k, v in t.objective.state_dict().items()}
    out["ratio"] = out["dist_norm"] / out["det_norm"]
    return out


def count_collectives(ddp_module, counts, key):
    """Count the gradient all-reduces a DDP module launches (one per bucket), then do them as DDP would."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        counts[key] += 1
        return allreduce_hook(state, bucket)
    ddp_module.register_comm_hook(None, hook)


def run_accumulated(teacher, global_batch, rank=0, world=1, accumulate=4):
    """`accumulate` micro-batches then one optimizer step, syncing gradients as Trainer does: the
    collectives launched on each micro-step, and the step's update of every student and adapter tensor."""
    from utils.objective import Batch
    t = make_trainer(teacher)
    counts = {"student": 0, "objective": 0}
    if world > 1:
        count_collectives(t.model, counts, "student")
        for part in t.ddp_objective_parts:
            count_collectives(part, counts, "objective")
    imgs, targets = fixed_batch(global_batch)
    per_step = []
    params = [p for group in t.optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    t.optimizer.zero_grad()
    for i in range(accumulate):
        micro = Batch(*rank_slice(imgs, targets, rank, world))
        with t._gradient_sync(will_step=i == accumulate - 1):
            t._train_step(micro)
        per_step.append(dict(counts))
        counts.update(student=0, objective=0)
    t.optimizer.step()
    return {"collectives": per_step, "updates": [p.detach() - b for p, b in zip(params, before)]}


def main(out_dir, teacher, global_batch):
    from utils.torch_utils import RANK, WORLD_SIZE
    dist.init_process_group("gloo")
    try:
        result = run_steps(teacher, int(global_batch), RANK, WORLD_SIZE)
        result["accumulated"] = run_accumulated(teacher, int(global_batch), RANK, WORLD_SIZE)
        torch.save(result, Path(out_dir) / f"rank{RANK}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
