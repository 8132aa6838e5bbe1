"""The two DiGA training stages in one loop.

Warm-up (no target labels): student and EMA teacher see [clean source ; mixed source], where the
mixed view pastes the strongly augmented source over the translated source on a random half of
each sample's classes. Loss = CE(student(clean), y) + lambda * symmetric distillation.

Self-training adds, per step, a source->target ClassMix whose target part is labelled by the stored
pseudo-labels after bilateral consensus with the class centroids (or, for the baseline, a fixed
confidence threshold); the student's CE on it joins the loss, and the centroids follow the
teacher's features online with a small momentum.

Domain generalisation is the warm-up without a target: `mix=False` and no target images, so the second
view is the photometric one of the same source image and only source batches are read.

Every random draw is a function of (seed, stage, step), and the training state (student, teacher,
optimizer, centroids) is saved every `checkpoint_every` steps: a resumed run ends with the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import kernels
from ..config import AdaptConfig, DistilConfig, SelectionConfig
from ..data.datasets import open_dataset
from ..data.loader import BatchStream
from ..data.transforms import normalize, step_rng
from ..errors import DigaError
from ..interrupt import interrupt_at_step_boundary, stopped
from ..io import file_sha256
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.recompute import enable_activation_checkpointing
from ..models.registry import channels_last
from ..progress import log, progress_bar
from .augment import StrongView
from .centroids import agreeing_labels, class_means, load_centroids, momentum_update
from .distributed import World, all_gather_cat, barrier, init_world, rank_slice, unwrap, wrap_ddp
from .ema import EMATeacher
from .mixture import cross_domain_mixture
from .optim import make_optimizer, set_poly_lr
from .pseudo import PseudoLabelledDataset
from .state import has_train_state, load_train_state, save_train_state
from .supervised import check_crop, seg_loss, step_batches, workers_of
from .translators import Translator, build_translator


@dataclass
class SelfTrainInputs:
    """What self-training reads besides the model: pseudo-labels, centroids, the selection rule."""

    pseudo_dir: Path
    centroids: Path | None
    selection: SelectionConfig


def step_seed(seed: int, stage: str, step: int) -> int:
    return int(step_rng(seed, step, f"diga-{stage}").integers(2**62))


@dataclass
class StepContext:
    """Everything one DiGA step needs besides the batch (the benchmark builds one too)."""

    stage: str
    seed: int
    scfg: DistilConfig
    num_classes: int
    net: torch.nn.Module  # the student, DDP-wrapped when distributed
    teacher: EMATeacher | None
    optimizer: torch.optim.Optimizer
    translator: Translator
    strong: StrongView
    world: World = field(default_factory=World)
    device: str = "cpu"
    selection: SelectionConfig | None = None  # None: warm-up
    centroids: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    seg_loss: str = "ce"  # the source cross-entropy: plain or OHEM


def diga_step(ctx: StepContext, step: int, x_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor | None,
              pl_t: torch.Tensor | None) -> dict[str, float]:
    """One warm-up step (pl_t None) or self-training step on the global batch; returns the losses.
    x_t may be None when neither the mixture nor self-training reads it (domain generalisation)."""
    scfg, sel, world, device = ctx.scfg, ctx.selection, ctx.world, ctx.device
    selftrain = pl_t is not None
    s = step_seed(ctx.seed, ctx.stage, step)
    torch.manual_seed(s)  # dropout and anything else drawing from the global RNG
    gen = torch.Generator().manual_seed(s + 1)
    lr = set_poly_lr(ctx.optimizer, scfg.optim, step, scfg.steps)
    x_s, y_s = x_s.to(device), y_s.to(device)
    x_t = x_t.to(device) if x_t is not None else None

    # Views of the global batch (cheap, identical on every rank), then this rank's slice.
    x_aug = ctx.strong(x_s, scfg.aug_beta, s + 2)
    view2 = cross_domain_mixture(x_aug, ctx.translator(x_s, x_t), y_s, ctx.num_classes, gen) if scfg.mix else x_aug
    chosen_st = kernels.choose_classes(y_s, ctx.num_classes, gen) if selftrain else None
    x_t_aug = ctx.strong(x_t, scfg.aug_beta, s + 3) if selftrain else None
    x_s, y_s, view2 = (rank_slice(v, world) for v in (x_s, y_s, view2))
    b = x_s.shape[0]

    if scfg.target_bn:  # BatchNorm running statistics follow the target crops (no gradient)
        with torch.no_grad():
            unwrap(ctx.net)(normalize(rank_slice(x_t, world)))
    student_in = [x_s, view2]
    t_logits = t_feats = pl = pl_sel = None
    if ctx.teacher is not None:
        t_in = torch.cat([x_s, view2] + ([rank_slice(x_t, world)] if selftrain else []))
        t_logits, t_feats = ctx.teacher(normalize(t_in), bf16=scfg.teacher_bf16)
    mix_img = mix_lab = None
    if selftrain:
        pl = rank_slice(pl_t, world).to(device)
        if sel.kind == "consensus":
            pl_sel = kernels.consensus_select(pl, t_feats[2 * b:], ctx.centroids)
        else:  # threshold: applied when the labels were read; none: every pseudo-label counts
            pl_sel = pl
        mix_img, mix_lab = kernels.class_mix(x_s, rank_slice(x_t_aug, world), y_s, pl_sel.to(y_s.dtype),
                                             rank_slice(chosen_st, world))
        if scfg.mix_forward == "joint":
            student_in.append(mix_img)

    logits, _ = ctx.net(normalize(torch.cat(student_in)))
    if scfg.distil:
        loss_ce = seg_loss(logits[:b], y_s, ctx.seg_loss)
        loss_kd = scfg.lambda_distil * kernels.symmetric_distillation_loss(t_logits[:2 * b], logits[:2 * b],
                                                                          scfg.mixed_scale)
    else:  # ablation: both views are plain supervised inputs
        loss_ce = seg_loss(logits[:2 * b], torch.cat([y_s, y_s]), ctx.seg_loss)
        loss_kd = torch.zeros((), device=device)
    loss = loss_ce + loss_kd
    out = {"ce": loss_ce.item(), "kd": loss_kd.item()}
    if selftrain:
        mix_logits = logits[2 * b:] if scfg.mix_forward == "joint" else ctx.net(normalize(mix_img))[0]
        loss_st = seg_loss(mix_logits, mix_lab)
        loss = loss + loss_st
        out["st"] = loss_st.item()
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ctx.optimizer.step()
    if ctx.teacher is not None:
        ctx.teacher.update(ctx.net, step, scfg.ema_max)
    if selftrain and ctx.centroids is not None and sel.online_centroids:
        labels_t = pl_sel if sel.centroid_labels == "consensus" else pl
        ctx.centroids, ctx.seen = _update_centroids(ctx.centroids, ctx.seen, t_logits, t_feats, y_s, labels_t, b,
                                                    ctx.num_classes, sel, world)
    out["lr"] = lr
    return out


def train_distil_stage(stage: str, cfg: AdaptConfig, scfg: DistilConfig, init_checkpoint: str | Path,
                       out_dir: str | Path, resume: bool = False, selftrain: SelfTrainInputs | None = None,
                       translator: Translator | None = None,
                       on_finish: Callable[[torch.nn.Module, World], None] | None = None) -> Path:
    """Run a warm-up (selftrain=None) or self-training stage; returns `out_dir/model.safetensors` (the
    student's last weights; the teacher is saved beside it as teacher.safetensors). `on_finish` sees
    every rank's final student (tests use it to compare ranks)."""
    world = init_world(cfg.device)
    device = cfg.device
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_dir = out / "state"
    torch.manual_seed(cfg.seed)
    student, meta = load_checkpoint(init_checkpoint, device)
    crop, scale = tuple(cfg.crop), tuple(cfg.scale)
    src_data = open_dataset(cfg.source, strict=cfg.data.strict)
    check_crop(crop, src_data, cfg.source)
    src = step_batches(src_data, scfg.batch_size, crop, scale, scfg.source_view, cfg.seed, f"{stage}-src", cfg.data,
                       meta.classes)
    sel = selftrain.selection if selftrain else None
    tgt = None
    if scfg.mix or scfg.target_bn or selftrain is not None:  # else no target image is read (generalisation)
        if cfg.target is None:
            raise DigaError(f"stage {stage} needs target images (the mixture, target BN statistics or "
                            "self-training); set a target")
        tgt_images = open_dataset(cfg.target, labelled=False)
        tgt_data = tgt_images if selftrain is None else PseudoLabelledDataset(
            tgt_images, selftrain.pseudo_dir, sel.threshold if sel.kind == "threshold" else None)
        tgt = step_batches(tgt_data, scfg.batch_size, crop, scale, scfg.target_view, cfg.seed, f"{stage}-tgt",
                           cfg.data)
        if src.batch_size != tgt.batch_size:
            raise DigaError(f"{stage}: the source batch has {src.batch_size} images but the target batch "
                            f"{tgt.batch_size}; give both views the same number of slots")
    channels_last(student).train()
    if cfg.model.activation_checkpointing:
        log.info("activation checkpointing: %d student blocks recomputed in the backward pass",
                 enable_activation_checkpointing(student))
    num_classes = meta.num_classes
    teacher = EMATeacher(student) if (scfg.distil or selftrain is not None) else None
    optimizer = make_optimizer(student, scfg.optim)
    translator = translator or build_translator(cfg.translator, device)
    strong = StrongView()
    centroids = seen = None
    if sel is not None and sel.kind == "consensus":
        if selftrain.centroids is None:
            raise ValueError("consensus selection needs a centroids file")
        centroids, seen = (t.to(device) for t in load_centroids(selftrain.centroids))

    modules = {"model": student, **({"teacher": teacher.module} if teacher else {})}
    start = 0
    init_hash = file_sha256(init_checkpoint)
    if resume and has_train_state(state_dir):
        info, extra = load_train_state(state_dir, modules, optimizer)
        if info.get("init_sha256") not in (None, init_hash):
            raise DigaError(f"--resume: the state in {state_dir} was trained from another --init model "
                            f"(sha256 {info['init_sha256'][:12]}, given {init_hash[:12]}); pass the same --init "
                            "or use --overwrite to start the stage again")
        start = int(info["step"])
        if centroids is not None and "centroids" in extra:
            centroids, seen = extra["centroids"].to(device), extra["seen"].bool().to(device)
        log.info("resuming %s from step %d", stage, start)
    net = wrap_ddp(student, world, device)

    def save_state(step: int) -> None:
        if world.is_main:
            extra = {"centroids": centroids, "seen": seen.to(torch.uint8)} if centroids is not None else None
            save_train_state(state_dir, modules, optimizer, {"step": step, "stage": stage, "init_sha256": init_hash},
                             extra)

    ctx = StepContext(stage=stage, seed=cfg.seed, scfg=scfg, num_classes=num_classes, net=net, teacher=teacher,
                      optimizer=optimizer, translator=translator, strong=strong, world=world, device=device,
                      selection=sel, centroids=centroids, seen=seen, seg_loss=cfg.seg_loss)
    t0 = time.time()
    workers = workers_of(cfg.data)
    src_stream = BatchStream(src, start, scfg.steps, workers, device)
    tgt_stream = BatchStream(tgt, start, scfg.steps, workers, device) if tgt is not None else None
    log.info("%s: %d steps, source %s (%d images), target %s, %d loader workers per stream", stage,
             scfg.steps - start, cfg.source, len(src.data),
             f"{cfg.target} ({len(tgt.data)} images)" if tgt is not None else "none", workers)
    targets = tgt_stream if tgt_stream is not None else (None for _ in range(start, scfg.steps))
    with interrupt_at_step_boundary() as interrupt, progress_bar(stage, scfg.steps, completed=start) as bar:
        for step, b_s, b_t in zip(range(start, scfg.steps), src_stream, targets, strict=True):
            x_t, pl_t = b_t.on(device) if b_t is not None else (None, None)
            x_s, y_s = b_s.on(device)
            losses = diga_step(ctx, step, x_s, y_s, x_t, pl_t if selftrain else None)
            centroids, seen = ctx.centroids, ctx.seen
            bar.advance(text=" ".join(f"{k} {v:.3f}" for k, v in losses.items()))
            if cfg.select_best and (step + 1) % cfg.snapshot_every == 0 and world.is_main:
                save_checkpoint(student, out / "snapshots" / f"step{step + 1:06d}.safetensors",
                                meta.model_copy(update={"stage": f"{stage}@{step + 1}"}))
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < scfg.steps:
                save_state(step + 1)
            if interrupt() and step + 1 < scfg.steps:
                save_state(step + 1)
                raise stopped(stage, step + 1, out)
    src_stream.summary(f"{stage} source")
    if tgt_stream is not None:
        tgt_stream.summary(f"{stage} target")
    log.info("%s: %d steps in %.0f s", stage, scfg.steps - start, time.time() - t0)
    ckpt = out / "model.safetensors"
    meta = meta.model_copy(update={"data": {"source": cfg.source, "target": cfg.target, "target_val": cfg.target_val}})
    if world.is_main:
        save_checkpoint(student, ckpt, meta.model_copy(update={"stage": stage}))
        if teacher is not None:
            save_checkpoint(teacher.module, out / "teacher.safetensors",
                            meta.model_copy(update={"stage": f"{stage}-teacher"}))
    save_state(scfg.steps)
    if on_finish is not None:
        on_finish(student, world)
    barrier(world)
    return ckpt


def _update_centroids(centroids: torch.Tensor, seen: torch.Tensor, t_logits: torch.Tensor, t_feats: torch.Tensor,
                      y_s: torch.Tensor, pl_t: torch.Tensor, b: int, num_classes: int, sel: SelectionConfig,
                      world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """Online momentum update from the teacher's target features (pseudo-label == teacher argmax) and
    its mixed-source features (source label == teacher argmax); the statistics of every rank are
    gathered so all ranks apply the same update in global batch order."""
    lab_t = agreeing_labels(pl_t, t_logits[2 * b:])
    lab_m = agreeing_labels(y_s, t_logits[b:2 * b])
    means_t, valid_t = class_means(t_feats[2 * b:], lab_t, num_classes, sel.centroid_min_pixels)
    means_m, valid_m = class_means(t_feats[b:2 * b], lab_m, num_classes, sel.centroid_min_pixels)
    means = torch.cat([all_gather_cat(means_t, world), all_gather_cat(means_m, world)])
    valid = torch.cat([all_gather_cat(valid_t, world), all_gather_cat(valid_m, world)])
    return momentum_update(centroids, seen, means, valid, sel.centroid_momentum)
