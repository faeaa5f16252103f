"""Full-parameter SFT of Qwen2.5-VL (the Infi-Med recipe) in one handwritten training loop.

\b
    torchrun --nproc_per_node 2 train.py --model DIR --data train.jsonl --out runs/x
    python train.py --model DIR --data train.jsonl --out runs/x --global-batch 8   # one process

DDP by default, `--fsdp` shards parameters, gradients and optimizer state with FSDP2. Multi-node:
`torchrun --nnodes 2 --node-rank R --master-addr HOST --nproc-per-node 8 train.py ...` with --out
on a filesystem every node sees. `--resume` continues exactly from the newest complete checkpoint
in --out (a damaged one is set aside and the one before it used). GPU: NCCL and bf16 autocast;
CPU: gloo and fp32 (`--amp bf16` runs the GPU's autocast path on a CPU, `--device` switches).

Read top to bottom: config -> schedule -> batch plan -> loss module -> model and optimizer -> train();
checkpoint.py writes and resumes the checkpoints.
The recipe (paper, section 4.1): AdamW (0.9, 0.999), warmup ratio 0.05 then cosine, 3 epochs,
global batch 64, max length 4096 tokens, at most 262,144 pixels per image.
"""
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass

import click
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
from checkpoint import check_resume_settings, file_sha1, list_checkpoints, resume_newest, save_checkpoint
from cli import command_options, setting
from image_processor import ImageProcessor
from infimed import QwenVL
from tally import Tally


# ----------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    model: str = setting("", "Hub-style checkpoint dir (config.json, safetensors, tokenizer files)")
    data: str = setting("", "ShareGPT JSONL (canonical records, see data.py)")
    out: str = setting("runs/sft", "checkpoints step-NNNNNN/ and log.jsonl")
    # paper section 4.1
    epochs: int = setting(3, "paper: 3 epochs")
    global_batch: int = setting(64, "paper: 64 samples per step = world size x micro_batch x accumulation")
    micro_batch: int = setting(1, "samples per forward on one rank (packed into rows with --packing)")
    max_len: int = setting(4096, "paper: max input sequence length 4096 tokens")
    min_pixels: int = setting(3136, "4 x 28 x 28, the Qwen2-VL image processor default")
    max_pixels: int = setting(262144, "paper: 262,144 = 512 x 512 pixels, at most 334 image tokens")
    warmup_ratio: float = setting(0.05, "paper: warm-up ratio 0.05, then cosine")
    beta1: float = setting(0.9, "paper: AdamW beta1")
    beta2: float = setting(0.999, "paper: AdamW beta2")
    # The paper states neither learning rate nor weight decay: 1e-5 is the usual full-SFT value
    # for Qwen2.5-VL-3B/7B (e.g. LLaMA-Factory's examples); weight decay 0 and a cosine down to 0
    # are transformers' Trainer defaults.
    lr: float = setting(1e-5, "peak learning rate (not stated in the paper)")
    min_lr_ratio: float = setting(0.0, "cosine floor = lr x min_lr_ratio")
    weight_decay: float = setting(0.0, "applied to matrices only (never to biases and norm weights)")
    eps: float = setting(1e-8, "AdamW epsilon")
    clip: float = setting(1.0, "max global grad norm (0 = no clipping)")
    # per-part learning rates: None = lr, 0 = frozen (requires_grad False, left out of AdamW)
    lr_vision: float = setting(None, "vision tower (visual.patch_embed, visual.blocks); unset = lr, 0 = frozen")
    lr_merger: float = setting(None, "merger (visual.merger), the vision -> LLM projector; unset = lr, 0 = frozen")
    lr_llm: float = setting(None, "language model (embeddings, layers, norm, head); unset = lr, 0 = frozen")
    # Global batches sorted together by length (data.LengthGroupedSampler chunks) cut padding but
    # make each batch nearly one kind of sample (all captions, all yes/no), which slowed learning
    # on the synthetic demo (docs/notes.md). 1 = plain random batches, transformers' Trainer
    # default too; micro-batches within a step are length-sorted either way.
    length_group: int = setting(1, "global batches sorted together by length; 1 = random batches")
    packing: bool = setting(False, "pack each micro-batch's samples into rows of at most max_len")
    grad_ckpt: bool = setting(False, "non-reentrant activation checkpointing (reentrant breaks DDP)")
    fsdp: bool = setting(False, "FSDP2 fully_shard per decoder layer and vision block, plus the root")
    seed: int = setting(1337, "data order (seed + epoch) and per-rank RNGs (seed + rank)")
    save_every: int = setting(500, "optimizer steps between checkpoints (one is always written at the end)")
    keep: int = setting(2, "complete checkpoints kept in --out (older ones are deleted)")
    stop_after: int = setting(0, "stop after this many optimizer steps (0 = never); the schedule is unchanged")
    resume: bool = setting(False, "continue from the newest complete checkpoint in --out")
    force: bool = setting(False, "with --resume: continue although settings or the data file changed")
    workers: int = setting(2, "DataLoader worker processes per rank")
    peak_tflops: float = setting(0.0, "dense bf16 peak per GPU for MFU; 0 = look up the GPU name")
    device: str = setting("auto", "auto (cuda when available) | cuda | cpu: the one switch for GPU-only code")
    amp: str = setting("auto", "auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32")


def accumulation_steps(cfg, world):
    per_pass = world * cfg.micro_batch
    if cfg.global_batch % per_pass:
        ok = [m for m in range(1, cfg.global_batch + 1) if cfg.global_batch % (world * m) == 0]
        raise click.UsageError(f"global batch {cfg.global_batch} is not a multiple of world size {world} x "
                               f"micro-batch {cfg.micro_batch}; pick --micro-batch from {ok}")
    return cfg.global_batch // per_pass


# --------------------------------------------------------------------------------- schedule
def lr_at(step, total, cfg):
    """Learning rate of optimizer step `step` (0-based) of `total`: linear warmup over
    ceil(warmup_ratio x total) steps reaching cfg.lr on the last warmup step, then a cosine that
    lands exactly on the floor cfg.lr x cfg.min_lr_ratio at the last step."""
    warmup = math.ceil(cfg.warmup_ratio * total)
    floor = cfg.lr * cfg.min_lr_ratio
    done = step + 1  # updates applied once this one is
    if done <= warmup:
        return cfg.lr * done / warmup
    progress = (done - warmup) / max(1, total - warmup)
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------- batch plan
def plan_epoch(sampler, epoch, world, accum):
    """The data order of one epoch: a list of optimizer steps; step[r][k] lists the dataset
    indices of micro-batch k on rank r. Every sample appears exactly once per epoch.
    `sampler` is data.LengthGroupedSampler over the whole data with batch_size = global batch
    and a single "rank": it yields the shuffled, length-grouped global batches. Each is split here
    into world x accum micro-batches, so a step holds the same samples whatever the world size
    (a run on 2 GPUs sees the same data per step as one on 8, or as one process doing the whole
    global batch). Within a step, samples are sorted by length so micro-batches hold similar
    lengths, and dealt round-robin over ranks so each rank gets a mix. A global batch smaller
    than world x accum (tiny data) leaves some micro-batches empty; the loop runs those with
    no supervised tokens so every rank still joins the gradient all-reduce."""
    sampler.set_epoch(epoch)
    steps = []
    for batch in sampler.plan():
        batch = sorted(batch, key=lambda i: -sampler.lengths[i])
        n, slots = len(batch), world * accum
        micro = [batch[j * n // slots:(j + 1) * n // slots] for j in range(slots)]  # sizes differ by <= 1
        steps.append([[micro[k * world + r] for k in range(accum)] for r in range(world)])
    return steps


# ------------------------------------------------------------------------------ loss module
class SFTLoss(nn.Module):
    """Wraps QwenVL so that DDP / FSDP see a single forward returning the summed token
    cross-entropy. Logits are computed only at supervised positions: the full (L, 151,936) fp32
    logits of a 4096-token row would be 2.5 GB per row."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels, attention_mask, pixel_values=None, image_grid_thw=None):
        model = self.model
        dummy = 0.0
        if pixel_values is None:
            # A text-only micro-batch would leave the vision tower without gradients, and DDP
            # would wait for them forever; under FSDP the ranks must also run every sharded block
            # (its all-gather) in the same order, frozen or not. Plan: run the tower on one blank
            # 28x28 image (4 patches, 1 token) with weight 0, before the decoder as a real image
            # would be. The graph stays static and the gradient it adds is exactly zero; chosen
            # over find_unused_parameters, which costs a graph walk per step, needs extra care
            # under no_sync, and has no FSDP counterpart.
            v = model.config.vision
            blank = torch.zeros(4, v.in_channels * v.temporal_patch_size * v.patch_size ** 2,
                                device=input_ids.device)
            grid = torch.tensor([[1, 2, 2]], device=input_ids.device)
            dummy = model.visual(blank, grid).float().sum() * 0.0
        hidden = model(input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                       attention_mask=attention_mask, return_hidden=True)
        # Position t predicts token t+1, never across a packed-sample boundary or into padding.
        target = labels[:, 1:]
        keep = (target != -100) & (attention_mask[:, 1:] == attention_mask[:, :-1])
        logits = model.logits(hidden[:, :-1][keep]).float()
        return F.cross_entropy(logits, target[keep], reduction="sum") + dummy


class Collate:
    """Dataset indices of one micro-batch -> a padded (or packed) batch; a class, not a closure,
    so DataLoader workers can receive it whatever their start method."""

    def __init__(self, dataset, pad_id, max_len, packing):
        self.dataset, self.pad_id, self.max_len, self.packing = dataset, pad_id, max_len, packing

    def __call__(self, indices):
        samples = [self.dataset[i] for i in indices]  # a skip marker where an image failed to decode
        if self.packing:  # rows of at most max_len tokens, samples numbered 1..k in attention_mask
            lengths = [0 if data.is_skipped(s) else len(s["input_ids"]) for s in samples]
            batch = data.collate([[samples[i] for i in row] for row in data.pack(lengths, self.max_len)], self.pad_id)
        else:
            batch = data.collate(samples, self.pad_id)
        if batch is None:  # an empty slot (tiny data) or every sample unreadable: a blank stand-in
            s = next((x for x in map(self.dataset.__getitem__, range(len(self.dataset))) if not data.is_skipped(x)),
                     None)
            if s is None:
                raise RuntimeError(f"no sample of the {len(self.dataset)} training records can be encoded: every "
                                   "one fails when its images are decoded; see the warnings above for the files")
            skipped = Counter(x.get("skip", "unknown") for x in samples if x is not None)
            batch = data.collate([dict(s, labels=torch.full_like(s["labels"], -100))], self.pad_id)
            batch["n_skipped"], batch["skipped"] = len(indices), dict(skipped)
        batch["indices"] = list(indices)
        return batch


def supervised_count(batch):
    m = batch["attention_mask"]
    return int(((batch["labels"][:, 1:] != -100) & (m[:, 1:] == m[:, :-1])).sum())


# ------------------------------------------------------------------------- model and optimizer
def part_lr(name, cfg):
    """Learning rate of a parameter by part: vision tower, merger (visual.merger.*) or LLM."""
    part = "merger" if name.startswith("visual.merger.") else "vision" if name.startswith("visual.") else "llm"
    lr = getattr(cfg, f"lr_{part}")
    return cfg.lr if lr is None else lr


def param_groups(model, cfg):
    """AdamW groups: weight decay on matrices only (linear weights, embeddings, the Conv3d patch
    embed), never on biases and norm weights; one group per learning rate. Each group carries
    lr_scale, its lr relative to cfg.lr, which the schedule multiplies. Frozen params are left out."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay, lr = p.ndim >= 2, part_lr(name, cfg)
        g = groups.setdefault((lr, decay), {"params": [], "weight_decay": cfg.weight_decay if decay else 0.0,
                                            "lr_scale": lr / cfg.lr})
        g["params"].append(p)
    return list(groups.values())


def on_cuda(cfg):
    return {"auto": torch.cuda.is_available(), "cuda": True, "cpu": False}[cfg.device]


def uses_bf16(cfg):
    """bf16 autocast (weights and optimizer state stay fp32): --amp, by default on GPUs only."""
    return cfg.amp == "bf16" or (cfg.amp == "auto" and on_cuda(cfg))


def shard(loss_module, cfg):
    """FSDP2: each decoder layer and vision block is one unit (its parameters are all-gathered
    just before use and freed after); the root holds the rest (embeddings, head, norms, merger)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if uses_bf16(cfg) else None
    kw = {"mp_policy": mp} if mp else {}
    m = loss_module.model
    for block in list(m.visual.blocks) + list(m.model.layers):
        fully_shard(block, **kw)
    fully_shard(loss_module, **kw)
    return loss_module


def flops_per_step(batches, mcfg, n_text, n_vision):
    """Training FLOPs of a list of micro-batches: 6 x params x tokens (forward 2, backward 4)
    for the decoder layers (every token), the LM head (supervised tokens only, as computed) and
    the vision blocks (per patch; the merger and patch embed are small), plus attention:
    causal self-attention costs 6 x layers x width x s^2 per sample of length s (QK^T and AV,
    2 x 2 x s^2 x d / 2 forward, x 3 with backward); the vision tower's 12 x width x patches x
    span (non-causal) where span is the window (64 patches) or the whole image (full blocks)."""
    v = mcfg.vision
    win = (v.window_size // v.patch_size) ** 2
    n_full = len(v.fullatt_block_indexes)
    total = 0.0
    for b in batches:
        m = b["attention_mask"]
        tokens = int((m > 0).sum())
        sq = sum(int(c) ** 2 for row in m for c in torch.bincount(row)[1:] if c > 0)
        total += 6 * n_text * tokens + 6 * mcfg.hidden_size * mcfg.vocab_size * supervised_count(b)
        total += 6 * mcfg.num_hidden_layers * mcfg.hidden_size * sq
        if b.get("image_grid_thw") is not None:
            for t, h, w in b["image_grid_thw"].tolist():
                p = t * h * w
                span = n_full * p + (v.depth - n_full) * min(p, win)
                total += 6 * n_vision * p + 12 * v.hidden_size * p * span
    return total


# ------------------------------------------------------------------------------------- checks
def validate(cfg):
    """Settings that would waste a run are refused before it starts."""
    fp32_max = torch.finfo(torch.float32).max  # an lr beyond it cannot even be applied to fp32 weights
    checks = [("lr", cfg.lr, math.isfinite(cfg.lr) and 0 < cfg.lr <= fp32_max),
              ("min_lr_ratio", cfg.min_lr_ratio, 0 <= cfg.min_lr_ratio <= 1),
              ("warmup_ratio", cfg.warmup_ratio, 0 <= cfg.warmup_ratio < 1),
              ("weight_decay", cfg.weight_decay, math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0),
              ("clip", cfg.clip, math.isfinite(cfg.clip) and cfg.clip >= 0),
              ("eps", cfg.eps, math.isfinite(cfg.eps) and cfg.eps > 0),
              ("beta1", cfg.beta1, 0 <= cfg.beta1 < 1), ("beta2", cfg.beta2, 0 <= cfg.beta2 < 1),
              ("epochs", cfg.epochs, cfg.epochs > 0), ("global_batch", cfg.global_batch, cfg.global_batch > 0),
              ("micro_batch", cfg.micro_batch, cfg.micro_batch > 0), ("max_len", cfg.max_len, cfg.max_len > 0),
              ("save_every", cfg.save_every, cfg.save_every > 0), ("keep", cfg.keep, cfg.keep >= 0)]
    checks += [(f"lr_{part}", v, v is None or (math.isfinite(v) and v >= 0))
               for part, v in (("vision", cfg.lr_vision), ("merger", cfg.lr_merger), ("llm", cfg.lr_llm))]
    checks += [("device", cfg.device, cfg.device in ("auto", "cuda", "cpu")),
               ("amp", cfg.amp, cfg.amp in ("auto", "bf16", "fp32"))]
    bad = [f"--{k.replace('_', '-')} {v}" for k, v, ok in checks if not ok]
    if bad:
        raise click.UsageError(f"invalid settings: {', '.join(bad)} (learning rates finite and > 0, ratios in "
                               "[0, 1), batch sizes, epochs and save interval positive)")


# decode-time skips are counted by these reasons (data.SampleError); anything else is "other"
SKIP_REASONS = ("image_missing", "image_corrupt", "image_aspect")


def check_finite(model, step):
    """Before a checkpoint is written: the updated weights must all be finite."""
    total = sum(p.detach().float().pow(2).sum() for p in model.parameters())
    total = float(total.full_tensor() if hasattr(total, "full_tensor") else total)
    if not math.isfinite(total):
        raise FloatingPointError(f"step {step}: the weights are no longer finite after the update; no "
                                 "checkpoint was written (lower --lr, or resume from the last checkpoint)")


# ------------------------------------------------------------------------------------ train
def train(cfg: TrainConfig):
    validate(cfg)
    # ---- processes: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; plain python is one process.
    # One device switch: every GPU-only choice below (NCCL, fused AdamW, pinned memory, memory
    # and MFU logging) follows `cuda`; bf16 autocast follows --amp and runs on a CPU too.
    distributed = "RANK" in os.environ
    cuda = on_cuda(cfg)
    rank, world, local = 0, 1, 0
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    master = rank == 0
    accum = accumulation_steps(cfg, world)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)
    # bf16 autocast (params and optimizer state stay fp32): on GPU by default, on a CPU when asked
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if uses_bf16(cfg) else contextlib.nullcontext()

    # ---- data
    tokenizer = data.load_tokenizer(cfg.model)
    image_processor = ImageProcessor(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    dataset = data.SFTDataset(cfg.data, tokenizer, image_processor, cfg.max_len)
    pad_id = data.pad_id(tokenizer)
    sampler = data.LengthGroupedSampler(dataset.lengths, cfg.global_batch, seed=cfg.seed,
                                        group_chunks=cfg.length_group)
    steps_per_epoch = len(sampler)
    total = cfg.epochs * steps_per_epoch

    collate = Collate(dataset, pad_id, cfg.max_len, cfg.packing)

    # ---- model, optimizer
    # fp32 master weights (autocast computes in bf16); under FSDP load on CPU and let
    # fully_shard move only this rank's shard to the GPU
    model = QwenVL.from_pretrained(cfg.model, dtype=torch.float32, device="cpu" if cfg.fsdp else device).train()
    model.gradient_checkpointing = cfg.grad_ckpt
    for name, p in model.named_parameters():  # freeze before DDP registers its hooks on trainable params
        p.requires_grad_(part_lr(name, cfg) != 0)
    n_vision = sum(p.numel() for n, p in model.named_parameters() if n.startswith("visual.blocks."))
    n_text = sum(p.numel() for n, p in model.model.layers.named_parameters())
    loss_module = SFTLoss(model)
    if cfg.fsdp:
        if not distributed:
            raise click.UsageError("--fsdp needs torchrun (several processes)")
        shard(loss_module, cfg)
        net = loss_module
    elif distributed:
        # gradient_as_bucket_view: grads live in the all-reduce buckets instead of a second copy
        # (saves 4 bytes per parameter, 15 GB for the 3B model)
        net = nn.parallel.DistributedDataParallel(loss_module, device_ids=[local] if cuda else None,
                                                  gradient_as_bucket_view=True)
    else:
        net = loss_module
    # built after fully_shard, which replaces each parameter by its sharded DTensor
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=cuda)

    # ---- resume
    step, epoch, state = 0, 0, {}
    data_sha1 = file_sha1(cfg.data)  # the data this run trains on, read once; every checkpoint records it
    ckpts = list_checkpoints(cfg.out)
    if cfg.resume and ckpts:
        check_resume_settings(ckpts[-1], cfg, data_sha1, say=print if master else lambda *a: None)
        path, state = resume_newest(ckpts, loss_module, opt, rank, distributed, device,
                                    log=print if master else lambda *a: None)
        step, epoch = state["step"], state["epoch"]
    elif ckpts and not cfg.resume:
        raise click.UsageError(f"{cfg.out} already holds checkpoints ({ckpts[-1]}); pass --resume or a new --out")
    skipped = Tally("training")  # decode-time skips by reason: the totals survive a resume
    for reason, n in state.get("skipped", {}).items():
        skipped.count(reason, n=n)
    if master:
        os.makedirs(cfg.out, exist_ok=True)
        for d in os.listdir(cfg.out):  # leftovers of a save interrupted by a crash
            if d.startswith(".tmp-step-"):
                shutil.rmtree(os.path.join(cfg.out, d), ignore_errors=True)
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        print(f"world {world} x micro-batch {cfg.micro_batch} x accumulation {accum} = global batch "
              f"{cfg.global_batch} samples; up to {cfg.global_batch * cfg.max_len:,} tokens per step; "
              f"{len(dataset):,} samples, {steps_per_epoch} steps/epoch, {total} steps; "
              f"{sum(p.numel() for p in model.parameters()):,} params on {device}"
              + (f"; resuming at step {step}" if step else ""))
        print(dataset.summary())

    peak = cfg.peak_tflops or next((v for k, v in {"H100": 989, "H200": 989, "H800": 989, "A100": 312,
                                                   "A800": 312}.items()
                                    if cuda and k in torch.cuda.get_device_name()), 0)
    log_path = os.path.join(cfg.out, "log.jsonl")
    if master and os.path.exists(log_path):  # drop lines of steps after the resumed checkpoint
        kept, cut = [], 0
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    cut += 1
                    continue
                if rec.get("step", 0) <= step:
                    kept.append(json.dumps(rec) + "\n")
        if cut:
            print(f"{log_path}: dropped {cut} unreadable line(s) (cut by a crash)")
        with open(log_path, "w") as f:
            f.writelines(kept)
    log_file = open(log_path, "a") if master else None
    bar = tqdm(total=total, initial=step, disable=not master, dynamic_ncols=True)
    t_start, step_start = time.time(), step

    # ---- the loop: one optimizer step per iteration
    loader, plan_epoch_no = None, None
    while step < total and not (cfg.stop_after and step >= cfg.stop_after):
        epoch = step // steps_per_epoch
        if plan_epoch_no != epoch:  # (re)build this rank's micro-batch stream from the current step
            plan = plan_epoch(sampler, epoch, world, accum)
            mine = [mb for s in plan[step % steps_per_epoch:] for mb in s[rank]]
            loader = iter(torch.utils.data.DataLoader(mine, batch_size=None, collate_fn=collate,
                                                      num_workers=cfg.workers, pin_memory=cuda))
            plan_epoch_no = epoch
        t0 = time.time()
        batches = [next(loader) for _ in range(accum)]
        # N = supervised tokens of the whole step (all micro-batches, all ranks)
        reasons = [sum(b.get("skipped", {}).get(r, 0) for b in batches) for r in SKIP_REASONS]
        counts = torch.tensor([sum(supervised_count(b) for b in batches),
                               sum(int((b["attention_mask"] > 0).sum()) for b in batches),
                               flops_per_step(batches, model.config, n_text, n_vision),
                               sum(b.get("n_skipped", 0) for b in batches),
                               sum(b["attention_mask"].numel() for b in batches), *reasons],
                              dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(counts)
        n_sup, n_tok, flops, padded = max(1, int(counts[0])), int(counts[1]), float(counts[2]), int(counts[4])
        # samples whose image failed to decode (data.collate drops them), by reason, over the run
        for r, n in zip(SKIP_REASONS, counts[5:].tolist()):
            skipped.count(r, n=int(n))
        skipped.count("other", n=int(counts[3]) - int(sum(counts[5:].tolist())))
        lr = lr_at(step, total, cfg)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        ce_total = torch.zeros((), dtype=torch.float64, device=device)
        for k, b in enumerate(batches):
            last = k == accum - 1
            # gradients are all-reduced only on the last micro-batch of the step
            if cfg.fsdp:
                net.set_requires_gradient_sync(last)
                sync = contextlib.nullcontext()
            else:
                sync = net.no_sync() if distributed and not last else contextlib.nullcontext()
            inputs = {k2: b[k2].to(device, non_blocking=True) for k2 in ("input_ids", "labels", "attention_mask")}
            if b.get("image_grid_thw") is not None and len(b["image_grid_thw"]):  # else text-only
                inputs.update(pixel_values=b["pixel_values"].to(device, non_blocking=True),
                              image_grid_thw=b["image_grid_thw"].to(device, non_blocking=True))
            with sync:
                with autocast:
                    ce = net(**inputs)
                # DDP / FSDP average gradients over ranks, hence x world: the sum over all
                # micro-batches and ranks of ce / N is then the mean over the step's tokens.
                (ce * (world / n_sup)).backward()
            ce_total += ce.detach().double()
        if distributed:
            dist.all_reduce(ce_total)
        loss = ce_total.item() / n_sup
        norm = torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                              cfg.clip if cfg.clip > 0 else float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            ids = [i for b in batches for i in b["indices"]]
            raise FloatingPointError(f"step {step}: loss {loss} grad norm {norm}; the step was not applied. "
                                     f"Sample indices on rank {rank} (records of {cfg.data}): {ids}")
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1

        # ---- log (rank 0), save
        dt = time.time() - t0
        if master:
            rate = (step - step_start) / (time.time() - t_start)
            # loss and grad_norm unrounded: runs on other world sizes or layouts are compared on them, and a
            # gradient of the wrong scale (clipped to the same update) shows only in the pre-clip norm
            rec = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss, "lr": lr,
                   "grad_norm": norm, "sup_tokens": n_sup, "tokens": n_tok,
                   "padding": round(1 - n_tok / padded, 4),
                   "sup_tok_s": round(n_sup / dt, 1), "tok_s": round(n_tok / dt, 1),
                   "tflops_s": round(flops / dt / 1e12 / world, 3), "step_s": round(dt, 3),
                   "eta_s": round((total - step) / rate), "skipped": sum(skipped.counts.values()),
                   "skipped_by_reason": {k: v for k, v in skipped.counts.items() if v}}
            if peak:
                rec["mfu"] = round(flops / dt / world / (peak * 1e12), 4)
            if cuda:
                rec["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", gn=f"{norm:.2f}", tok_s=f"{n_tok / dt:.0f}",
                            **({"mfu": f"{rec['mfu']:.1%}"} if peak else {}))
            bar.update(1)
        if step % cfg.save_every == 0 or step == total or step == cfg.stop_after:
            check_finite(model, step)
            save_checkpoint(cfg, step, epoch, loss_module, opt, tokenizer, image_processor, rank, master,
                            skipped.counts, data_sha1)
    bar.close()
    if master:
        print("samples skipped during training (an image failed to decode): "
              + (", ".join(f"{r} {n}" for r, n in skipped.counts.items() if n) or "none"))
    if log_file:
        log_file.close()
    if distributed:
        dist.destroy_process_group()
    return model


# -------------------------------------------------------------------------------------- CLI
@click.command(help=__doc__)
@command_options(TrainConfig, required=("model", "data"))
def main(**settings):
    train(TrainConfig(**settings))


if __name__ == "__main__":
    main()
