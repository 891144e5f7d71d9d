"""The training loop shared by train.py and train_distillation.py.

Read `Trainer.train` top to bottom: build everything once (`_setup`), then per epoch
loader -> model -> objective -> backward -> optimizer/EMA -> validation -> log -> checkpoint.
What is optimised is the objective (utils/objective.py); distillation is an objective built by
train_distillation.py's builder (docs/ARCHITECTURE.md), not a special case of this file.
"""
import math
import random
import shutil
import time
from contextlib import ExitStack, nullcontext
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from models.checkpoint import (build_from_checkpoint, load_checkpoint, load_model, save_checkpoint,
                               strip_checkpoint)
from models.transfer import transferable_state
from models.yolo import Model, model_summary
from utils.autoanchor import check_anchors
from utils.cli import UserError
from utils.dataset_yaml import check_dataset
from utils.datasets import create_dataloader
from utils.device_augment import DeviceAugment
from utils.evaluate import evaluate, print_results
from utils.files import resolve_file, shown_path, yaml_load, yaml_save
from utils.logging import ResultsLogger, progress_header, progress_text
from utils.objective import Batch, ObjectiveBuilder
from utils.tasks import TASKS
from utils.sources import check_imgsz
from utils.torch_utils import (LOCAL_RANK, RANK, WORLD_SIZE, EarlyStopping, ModelEMA, autocast_dtype, compiled,
                               de_parallel, init_seeds, lr_lambda, select_device, smart_optimizer,
                               to_channels_last, torch_distributed_zero_first)

PROGRESS_REFRESH_S = 0.5  # the progress bar reads the loss from the GPU at most this often
NOMINAL_BATCH = 64  # gradients are accumulated up to this batch size, as in YOLOv5 (hyp key `nbs`)
CHECKPOINT_FORMAT = "yolov5-distill"


def is_main_process():
    return RANK in (-1, 0)


class Trainer:
    """Trains one YOLOv5 model from parsed train.py options (an argparse.Namespace).

    `builder` (utils/objective.py ObjectiveBuilder) makes the objective optimised every batch: the task
    loss alone by default, + the teachers' terms for train_distillation.py.
    """

    def __init__(self, opt, builder=None):
        self.opt = opt
        self.builder = builder or ObjectiveBuilder()
        self.objective = None
        self.ddp_objective_parts = []  # the objective's trainable modules, DDP-wrapped (for no_sync)
        self.unlabeled_files = set()  # training images without labels (distillation only)
        self.save_dir = Path(opt.save_dir)
        self.weights_dir = self.save_dir / "weights"
        self.batch_hook = None  # opt-in per-batch callback hook(batch_index, batch_size) (benchmarks/bench_speed.py)

    # ------------------------------------------------------------------ setup
    def _setup_or_clean_up(self):
        """`_setup`, and when it fails (a user error, Ctrl-C) remove the run folder if it made it."""
        made = [p for p in (self.save_dir, *self.save_dir.parents) if not p.exists()] if is_main_process() else []
        try:
            self._setup()
        except BaseException:
            if made:
                shutil.rmtree(made[0], ignore_errors=True)
                for empty in made[1:]:  # the project folders made on the way, only while nothing else is in them
                    if empty.exists() and not any(empty.iterdir()):
                        empty.rmdir()
            raise

    def _setup(self):
        opt = self.opt
        self.device = select_device(opt.device, batch_size=opt.batch_size)
        self.cuda = self.device.type == "cuda"
        init_seeds(opt.seed + 1 + max(RANK, 0), deterministic=self.deterministic)
        if is_main_process():  # labels.jpg goes here during setup; a failed setup removes what it made
            self.weights_dir.mkdir(parents=True, exist_ok=True)

        self.resume_ckpt = load_checkpoint(opt.resume_path) if opt.resume_path else None
        self.hyp = self._load_hyp()
        self.hyp_as_given = deepcopy(self.hyp)  # saved for --resume; self.hyp gets scaled below
        with torch_distributed_zero_first(LOCAL_RANK):
            self.data = check_dataset(opt.data)
        self.nc = 1 if opt.single_cls else int(self.data["nc"])
        self.names = ["item"] if opt.single_cls and len(self.data["names"]) != 1 else self.data["names"]

        self.model = self._build_model()
        self.task = TASKS[self.model.task]  # what the batches carry, the task loss, the validation columns
        self.gs = max(int(self.model.stride.max()), 32)
        opt.imgsz = check_imgsz(opt.imgsz, self.gs)[0]  # --img 100 -> 128 with a warning, as YOLOv5
        if is_main_process():
            model_summary(self.model, opt.imgsz, verbose=True)
        self._freeze_layers()
        self.nbs = int(self.hyp.get("nbs", NOMINAL_BATCH))
        self.accumulate = max(round(self.nbs / opt.batch_size), 1)
        self.hyp["weight_decay"] *= opt.batch_size * self.accumulate / self.nbs

        # before AutoAnchor and the loss: the objective may set the student's anchors (distillation)
        self.anchors_set_by = self.builder.prepare_student(self.model, self.data, self.device,
                                                           resuming=self.resume_ckpt is not None)
        self._build_loaders()
        self._scale_hyp_for_model()
        task_objective = self.task.objective(self.model, opt)
        self.compute_loss = task_objective.compute_loss  # also the validation loss
        self.task_items = task_objective.item_names
        self.objective = self.builder.build(task_objective, self.model, self.hyp,
                                            unlabeled_images=self.dataset.n_unlabeled)
        self.optimizer = smart_optimizer(self.model, opt.optimizer, self.hyp["lr0"], self.hyp["momentum"],
                                         self.hyp["weight_decay"], self.objective.trainable_modules())
        self.lf = lr_lambda(opt.epochs, self.hyp["lrf"], cosine=opt.cos_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.model = to_channels_last(self.model, self.device)  # before the EMA copy: same layout
        self.ema = ModelEMA(self.model) if is_main_process() else None
        self.amp_dtype = autocast_dtype(self.device, opt.amp)  # bf16 / fp16 on CUDA, None on CPU
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_epoch, self.best_fitness, self.elapsed, self.last_opt_step = 0, 0.0, 0.0, -1
        self.stopper = EarlyStopping(patience=opt.patience)
        if self.resume_ckpt:
            self._restore_training_state(self.resume_ckpt)
        self._wrap_ddp()
        if is_main_process():  # only a run that could start records its options
            yaml_save(self.save_dir / "hyp.yaml", self.hyp_as_given)
            yaml_save(self.save_dir / "opt.yaml", vars(opt))
        # --compile compiles the student's forward (and so its backward); EMA, validation, checkpoints and
        # state-dict keys use self.model, exactly as without it.
        self.forward = compiled(self.model, opt.compile)

    @property
    def deterministic(self):
        return bool(self.opt.deterministic)

    def _load_hyp(self):
        if self.resume_ckpt:  # a resumed run keeps the hyperparameters it started with
            return dict(self.resume_ckpt["hyp"])
        hyp = self.opt.hyp if isinstance(self.opt.hyp, dict) else yaml_load(resolve_file(self.opt.hyp))
        hyp.setdefault("anchor_t", 4.0)
        return dict(hyp)

    def _build_model(self):
        """From the resume checkpoint, a .pt (transfer learning), or a YAML config (from scratch)."""
        opt = self.opt
        if self.resume_ckpt:
            model = Model(self.resume_ckpt["model_yaml"], nc=self.nc)
            model.load_state_dict(self.resume_ckpt["train_model"])
        elif opt.weights:  # the architecture is the checkpoint's unless --cfg overrides it
            pretrained, _ = build_from_checkpoint(load_checkpoint(opt.weights))
            cfg = resolve_file(opt.cfg) if opt.cfg else pretrained.yaml
            model = Model(cfg, nc=self.nc, anchors=self.hyp.get("anchors"))
            model.load_state_dict(self._transferable(pretrained, model), strict=False)
        else:
            if not opt.cfg:
                raise UserError("give --cfg (a model YAML such as yolov5s.yaml) or --weights (a .pt file)")
            model = Model(resolve_file(opt.cfg), nc=self.nc, anchors=self.hyp.get("anchors"))
        model.names = list(self.names)
        return model.to(self.device)

    def _transferable(self, pretrained, model):
        """Pretrained tensors that fit the new model (a detection head's rows into a -seg head, too); anchors
        stay the new model's when they were overridden on purpose (hyp `anchors`, or a --cfg whose anchors
        differ from the checkpoint's)."""
        skip_anchors = bool(self.hyp.get("anchors")) or model.yaml.get("anchors") != pretrained.yaml.get("anchors")
        keep = transferable_state(pretrained, model, keep_anchors=not skip_anchors)
        print(f"Transferred {len(keep)}/{len(model.state_dict())} items from {self.opt.weights}")
        return keep

    def _freeze_layers(self):
        """--freeze 10 freezes layers 0-9 (the backbone); --freeze 0 3 freezes layers 0 and 3."""
        freeze = self.opt.freeze or [0]
        layers = list(range(freeze[0])) if len(freeze) == 1 else freeze
        prefixes = tuple(f"model.{i}." for i in layers)
        for name, p in self.model.named_parameters():
            p.requires_grad = not name.startswith(prefixes)

    def _build_loaders(self):
        opt, hyp = self.opt, self.hyp
        rank_batch = opt.batch_size // WORLD_SIZE
        self.train_loader, self.dataset = create_dataloader(
            self.data["train"], opt.imgsz, rank_batch, self.gs, hyp=hyp, augment=True, cache=opt.cache,
            rect=opt.rect, rank=LOCAL_RANK, workers=opt.workers, shuffle=True, seed=opt.seed,
            single_cls=opt.single_cls, prefix="train: ", nc=self.nc, unlabeled=self.builder.unlabeled_source(self.data),
            device_augment=opt.device_augment, **self.task.loader_options(opt))
        self.device_augment = DeviceAugment(self.device, hyp, opt.imgsz) if opt.device_augment else None
        self.unlabeled_files = self.dataset.unlabeled_files  # per-image flags of each batch come from its paths
        self.val_loader = None
        if is_main_process():
            self.val_loader, _ = create_dataloader(
                self.data["val"], opt.imgsz, rank_batch * 2, self.gs, hyp=hyp, cache=opt.cache, rect=True,
                rank=-1, workers=opt.workers, pad=0.5, single_cls=opt.single_cls, prefix="val: ", nc=self.nc,
                **self.task.loader_options(opt))
            if not self.resume_ckpt:
                if self.anchors_set_by:
                    print(f"AutoAnchor: skipped, {self.anchors_set_by}")
                elif not opt.noautoanchor:
                    check_anchors(self.dataset, self.model, thr=hyp["anchor_t"], imgsz=opt.imgsz, seed=opt.seed,
                                  pretrained=Path(opt.weights).name if opt.weights else None)
                if not opt.noplots:
                    self._plot_labels()
        if RANK != -1:  # every rank must use the anchors rank 0 settled on
            dist.broadcast(de_parallel(self.model).model[-1].anchors, src=0)

    def _plot_labels(self):
        from utils.plots import plot_labels
        labels = np.concatenate([l for l in self.dataset.labels if len(l)] or [np.zeros((0, 5))], 0)
        plot_labels(labels, self.names, self.save_dir)

    def _scale_hyp_for_model(self):
        """Loss gains are tuned for 3 levels, 80 classes and 640 px: rescale as YOLOv5 does."""
        nl = de_parallel(self.model).model[-1].nl
        self.hyp["box"] *= 3 / nl
        self.hyp["cls"] *= self.nc / 80 * 3 / nl
        self.hyp["obj"] *= (self.opt.imgsz / 640) ** 2 * 3 / nl
        self.hyp["label_smoothing"] = self.opt.label_smoothing
        self.model.nc, self.model.hyp = self.nc, self.hyp

    def _restore_training_state(self, ckpt):
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(ckpt["model"])
            self.ema.updates = ckpt["ema_updates"]
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("extra"):  # the objective's trainable parts (e.g. feature adapters)
            self.objective.load_state_dict(ckpt["extra"])
        self.start_epoch = ckpt["epoch"] + 1
        self.best_fitness = ckpt["best_fitness"]
        self.elapsed = ckpt.get("elapsed_s", 0.0)
        self.last_opt_step = ckpt.get("last_opt_step", -1)
        self.scheduler.last_epoch = self.start_epoch - 1
        if ckpt.get("early_stopping"):  # patience counts on from the interrupted run, not from zero
            self.stopper.load_state_dict(ckpt["early_stopping"])
        print(f"Resuming training from {self.opt.resume_path} at epoch {self.start_epoch}")

    def _wrap_ddp(self):
        if RANK == -1:
            return
        if self.opt.sync_bn and self.cuda:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        ids = [LOCAL_RANK] if self.cuda else None

        def ddp(module):  # starts from rank 0's weights; bucketed gradient averaging on backward
            return nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                       output_device=LOCAL_RANK if self.cuda else None)
        self.model = ddp(self.model)
        self.ddp_objective_parts = self.objective.wrap_trainable(ddp)

    def _gradient_sync(self, will_step):
        """DDP all-reduces gradients on every backward; micro-steps that only accumulate skip it."""
        if RANK == -1 or will_step:
            return nullcontext()
        stack = ExitStack()
        for module in (self.model, *self.ddp_objective_parts):
            stack.enter_context(module.no_sync())
        return stack

    # ------------------------------------------------------------------ loop
    def train(self):
        """Run all epochs; returns the final validation results (YOLOv5's tuple: the task's metrics, val losses)."""
        self._setup_or_clean_up()
        opt = self.opt
        nb = len(self.train_loader)
        self.warmup_iters = max(round(self.hyp["warmup_epochs"] * nb), 100) if self.hyp["warmup_epochs"] else 0
        stopper = self.stopper
        results = None  # the latest EvalResult
        self.logger = ResultsLogger(self.save_dir, self._results_columns()) if is_main_process() else None
        if self.logger and self.resume_ckpt:  # --resume continues results.csv from its last finished epoch
            self.logger.truncate_after(self.start_epoch - 1)
        elif self.logger:  # a fresh run starts its own results.csv, even in an --exist-ok folder
            self.logger.start_fresh()
        if is_main_process():
            print(f"Image sizes {opt.imgsz} train, {opt.imgsz} val; {opt.workers} dataloader workers; "
                  f"logging to {self.save_dir}\nStarting training for {opt.epochs} epochs...")
        for epoch in range(self.start_epoch, opt.epochs):
            t0 = time.time()
            train_items = self._train_one_epoch(epoch, nb)
            lrs = [float(g["lr"]) for g in self.optimizer.param_groups[:3]]  # the LRs this epoch used
            self.scheduler.step()
            self.elapsed += time.time() - t0
            stop = False
            if is_main_process():
                final = epoch + 1 == opt.epochs
                if not opt.noval or final:
                    results = self._validate()
                fi = results.fitness if results else 0.0
                stop = stopper(epoch, fi) or final
                if fi > self.best_fitness:
                    self.best_fitness = fi
                self._log_epoch(epoch, train_items, results, lrs)
                if not opt.nosave or final:
                    self._save(epoch, fi)
            if RANK != -1:  # all ranks stop together
                flag = [stop]
                dist.broadcast_object_list(flag, 0)
                stop = flag[0]
            if stop:
                break
        if is_main_process():
            results = self._final_report(results)
        return results.as_tuple() if results else (0.0,) * len(self.task.metric_keys)

    def _train_one_epoch(self, epoch, nb):
        """One pass over the training set; returns the epoch's mean loss items by name."""
        opt, model = self.opt, self.model
        model.train()
        # Re-seed per epoch so a resumed run draws exactly the augmentations the uninterrupted one did.
        init_seeds(opt.seed + 1 + epoch * max(WORLD_SIZE, 1) + max(RANK, 0), deterministic=self.deterministic)
        self.train_loader.sampler.set_epoch(epoch)
        self.objective.on_epoch_start(epoch, opt.epochs)
        if opt.close_mosaic and epoch >= opt.epochs - opt.close_mosaic:
            self.dataset.close_mosaic()
        names = list(self.objective.item_names)
        sums, count = None, 0  # summed on the device; read back only to draw the bar and at the end
        image_counts = [0, 0] if self.unlabeled_files else None  # labelled, unlabeled images this epoch
        pbar = enumerate(self.train_loader)
        if is_main_process():
            print(progress_header(names, image_counts=image_counts is not None))
            pbar = tqdm(pbar, total=nb, bar_format="{l_bar}{bar:10}{r_bar}")
        self.optimizer.zero_grad(set_to_none=True)
        pending, last_draw = False, -math.inf
        for i, (imgs, targets, paths, _, *masks) in pbar:  # segmentation batches also carry masks
            ni = self.current_ni = i + nb * epoch
            labelled = self._labelled_mask(paths)
            if labelled is not None:
                n_labelled = int(labelled.sum())
                image_counts[0] += n_labelled
                image_counts[1] += len(paths) - n_labelled
            if self.device_augment:  # --device-augment: the batch holds tiles and plans, not images
                imgs, targets = self.device_augment((imgs, targets))
            imgs = self._to_device_input(imgs)
            self._warmup(ni, epoch)
            if opt.multi_scale:
                imgs = self._random_rescale(imgs)
            batch = Batch(imgs, targets.to(self.device, non_blocking=True), labelled,
                          masks[0].to(self.device, non_blocking=True) if masks else None)
            step_now = self._accumulation_done(ni)
            # gradients are synced on every batch that steps, including the epoch's last (stepped below)
            with self._gradient_sync(step_now or i == nb - 1):
                items = self._train_step(batch)
            pending = True
            if step_now:
                self._optimizer_step()
                pending = False
            sums = items if sums is None else sums + items
            count += 1
            if is_main_process() and (time.monotonic() - last_draw >= PROGRESS_REFRESH_S or i == nb - 1):
                last_draw = time.monotonic()
                mem = torch.cuda.memory_reserved() / 1e9 if self.cuda else 0.0
                pbar.set_description(progress_text(epoch, opt.epochs, mem, (sums / count).tolist(),
                                                   targets.shape[0], imgs.shape[-1], image_counts))
            if self.batch_hook:
                self.batch_hook(i, imgs.shape[0])
        if pending:  # a complete state at every epoch end is what makes --resume exact
            self._optimizer_step()
        means = (sums / max(count, 1)).tolist() if sums is not None else []
        items = dict(zip(names, means))
        if image_counts is not None:
            items.update(zip(("labelled_imgs", "unlabeled_imgs"), self._summed_over_ranks(image_counts)))
        return items

    def _labelled_mask(self, paths):
        """Per image of the batch, whether it has labels (bool [B] on the host); None: all have."""
        if not self.unlabeled_files:
            return None
        return torch.tensor([p not in self.unlabeled_files for p in paths])

    def _summed_over_ranks(self, counts):
        if RANK == -1:
            return list(counts)
        t = torch.tensor(counts, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def _to_device_input(self, imgs):
        """uint8 batch -> float 0-1 on the device (NHWC on CUDA, matching the channels-last weights)."""
        imgs = imgs.to(self.device, non_blocking=True)
        if self.cuda:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        return imgs.float() / 255

    def _train_step(self, batch):
        """Forward, objective, backward for one batch; returns the detached per-image loss items."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            raw, features = self.forward(batch.imgs, feature_layers=self.objective.feature_layers)
            loss, items = self.objective(batch, raw, features)
        if RANK != -1:
            loss = loss * WORLD_SIZE  # DDP averages gradients over ranks; YOLOv5 sums them
        self.scaler.scale(loss).backward()
        return items.detach()  # stays on the device: reading it here would wait for the GPU

    def _warmup(self, ni, epoch):
        """Ramp LR (biases down from warmup_bias_lr), momentum and accumulation over the first iterations."""
        if ni > self.warmup_iters or not self.warmup_iters:
            self.cur_accumulate = self.accumulate
            return
        xi = [0, self.warmup_iters]
        self.cur_accumulate = max(1, int(np.interp(ni, xi, [1, self.nbs / self.opt.batch_size]).round()))
        for j, group in enumerate(self.optimizer.param_groups):
            start = self.hyp["warmup_bias_lr"] if j == 0 else 0.0
            group["lr"] = float(np.interp(ni, xi, [start, group["initial_lr"] * self.lf(epoch)]))
            if "momentum" in group:
                group["momentum"] = float(np.interp(ni, xi, [self.hyp["warmup_momentum"], self.hyp["momentum"]]))

    def _accumulation_done(self, ni):
        return ni - self.last_opt_step >= self.cur_accumulate

    def _optimizer_step(self):
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm=10.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.last_opt_step = self.current_ni

    def _random_rescale(self, imgs):
        size = random.randrange(int(self.opt.imgsz * 0.5), int(self.opt.imgsz * 1.5) + self.gs) // self.gs * self.gs
        factor = size / max(imgs.shape[2:])
        if factor != 1:
            shape = [math.ceil(x * factor / self.gs) * self.gs for x in imgs.shape[2:]]
            imgs = nn.functional.interpolate(imgs, size=shape, mode="bilinear", align_corners=False)
        return imgs

    # ------------------------------------------------------------------ epoch end
    def _validate(self):
        """Per-epoch validation of the EMA (on a half copy under CUDA AMP; the EMA itself stays fp32)."""
        res = evaluate(self.ema.ema, self.val_loader, half=self.cuda and self.opt.amp,
                       single_cls=self.opt.single_cls, nc=self.nc, names=self.names,
                       compute_loss=self.compute_loss, leave_bar=False)
        print_results(res)
        return res

    def _results_columns(self):
        """results.csv: YOLOv5's columns of the task in its order (plotting scripts index them by position),
        then the objective's other items (distillation terms), the epoch's image counts when unlabeled images
        are mixed in, and the elapsed time."""
        task_items = [f"train/{k}" for k in self.task_items]
        lrs = [f"x/lr{j}" for j in range(3)]
        extra = [f"train/{k}" for k in self.objective.item_names if f"train/{k}" not in task_items]
        if self.unlabeled_files:
            extra += ["train/labelled_imgs", "train/unlabeled_imgs"]
        return ["epoch", *task_items, *self.task.metric_keys, *lrs, *extra, "x/elapsed_s"]

    def _log_epoch(self, epoch, train_items, results, lrs):
        row = {"epoch": epoch, **{f"train/{k}": v for k, v in train_items.items()}}
        values = results.as_tuple() if results else (0.0,) * len(self.task.metric_keys)
        row.update(zip(self.task.metric_keys, values))
        row.update({f"x/lr{j}": lr for j, lr in enumerate(lrs)})
        row["x/elapsed_s"] = round(self.elapsed, 2)
        self.logger.log_epoch(row)

    def _checkpoint(self, epoch, fi):
        """Everything needed to use the model (EMA weights) and to resume training exactly."""
        model = de_parallel(self.model)
        return {
            "format": CHECKPOINT_FORMAT, "version": 1,
            "model_yaml": deepcopy(model.yaml), "names": list(self.names), "nc": self.nc,
            "model": {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                      for k, v in self.ema.ema.state_dict().items()},
            "train_model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "ema_updates": self.ema.updates, "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.cuda else None,
            "extra": self.objective.state_dict() or None,  # the objective's trainable parts
            "epoch": epoch, "best_fitness": float(self.best_fitness), "fitness": float(fi),
            "early_stopping": self.stopper.state_dict(),
            "elapsed_s": float(self.elapsed), "last_opt_step": int(self.last_opt_step),
            "opt": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.opt).items()},
            "hyp": dict(self.hyp_as_given), "date": datetime.now().isoformat(),
        }

    def _save(self, epoch, fi):
        ckpt = self._checkpoint(epoch, fi)
        save_checkpoint(self.weights_dir / "last.pt", ckpt)
        if fi >= self.best_fitness:
            save_checkpoint(self.weights_dir / "best.pt", ckpt)
        if self.opt.save_period > 0 and epoch % self.opt.save_period == 0:
            save_checkpoint(self.weights_dir / f"epoch{epoch}.pt", ckpt)

    def _final_report(self, results):
        """Validate best.pt with plots and the per-class table, as YOLOv5 does at the end."""
        best = self.weights_dir / "best.pt"
        if best.exists():  # a finished run's best.pt is for use, not for resuming: drop the optimizer
            strip_checkpoint(best)
        if best.exists() and not self.opt.noval:
            model, _ = load_model(best, device=self.device)
            model.hyp, model.nc = self.hyp, self.nc
            print(f"\nValidating {best}...")
            res = evaluate(model, self.val_loader, half=False, single_cls=self.opt.single_cls, nc=self.nc,
                           names=self.names, compute_loss=self.compute_loss, plots=not self.opt.noplots,
                           save_dir=self.save_dir)
            print_results(res, per_class=True)
            results = res
        if not self.opt.noplots:
            from utils.plots import plot_results
            plot_results(self.save_dir / "results.csv")
        if self.logger:
            self.logger.close()
        values = results.as_tuple() if results else (0.0,) * len(self.task.metric_keys)
        print(f"Training finished in {self.elapsed / 3600:.3f} hours ({self.elapsed:.0f} s of epochs).\n"
              f"Final {shown_path(best) if best.exists() else 'model'}: {self.task.headline(values)}\n"
              f"Results saved to {shown_path(self.save_dir)}")
        return results
