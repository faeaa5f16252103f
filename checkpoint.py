"""Resumable checkpoints of a training run (train.py): each one a Hub-style model dir that loads
anywhere, plus what an exact resume needs, written so that a crash never leaves a half-written
checkpoint as the newest.

    <out>/step-000123/                 config.json, model*.safetensors (sharded above 5 GB), tokenizer,
                                       preprocessor_config.json, generation_config.json,
                                       train_config.json (the settings and the data file's sha1)
    <out>/step-000123/resume/          model and optimizer state (torch.distributed.checkpoint, sharded
                                       under FSDP), rng-rank<R>.pt per rank, state.json (step, epoch, skips)

    python -m pytest -q tests/test_train.py -k "resume or checkpoint or save"

A resume reads the newest complete checkpoint, sets a damaged one aside and tries the one
before it, and refuses settings or data that differ from the ones the checkpoint was trained
with (RESUME_KEYS) unless told to go on. The data order depends only on (seed, epoch, step) and
DCP reshards, so a run may resume on another number of processes.
"""
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import warnings

import click
import numpy as np
import torch
import torch.distributed as dist

from infimed import QwenVL

# torch.distributed.checkpoint warns when used by a single process, which is intended here
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def save_checkpoint(cfg, step, epoch, loss_module, opt, tokenizer, image_processor, rank, master, skipped,
                    data_sha1):
    """<out>/step-000123/: a Hub-style model dir (config.json, safetensors, generation_config,
    tokenizer with chat template, preprocessor_config with the training pixel limits) plus
    resume/ (model and optimizer state via torch.distributed.checkpoint, sharded under FSDP;
    every rank's RNG states; step and epoch). Written to a temp dir and renamed when complete,
    so a crash or Ctrl-C mid-save leaves the previous checkpoint as the newest complete one."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
    import torch.distributed.checkpoint as dcp
    final = os.path.join(cfg.out, f"step-{step:06d}")
    tmp = os.path.join(cfg.out, f".tmp-step-{step:06d}")
    if master:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "resume"))
    barrier()
    model = loss_module.model
    if cfg.fsdp:  # gather full weights to rank 0's CPU, then write them through a meta-device twin
        full = get_model_state_dict(loss_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if master:
            with torch.device("meta"):
                twin = QwenVL(model.config)
            twin.load_state_dict({k.removeprefix("model."): v for k, v in full.items()}, assign=True)
            if model.config.tie_word_embeddings:
                twin.lm_head.weight = twin.model.embed_tokens.weight
            twin.save_pretrained(tmp)
    elif master:
        model.save_pretrained(tmp)
    if master:
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        gen = os.path.join(cfg.model, "generation_config.json")
        if os.path.exists(gen):  # the base model's own (sampling defaults included) replaces save_pretrained's
            shutil.copy(gen, tmp)
        with open(os.path.join(tmp, "train_config.json"), "w") as f:
            json.dump({**dataclasses.asdict(cfg), "data_sha1": data_sha1}, f, indent=2)
    msd, osd = get_state_dict(loss_module, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=os.path.join(tmp, "resume"))
    torch.save(rng_states(), os.path.join(tmp, "resume", f"rng-rank{rank}.pt"))
    if master:
        with open(os.path.join(tmp, "resume", "state.json"), "w") as f:
            json.dump({"step": step, "epoch": epoch, "skipped": dict(skipped)}, f)
    barrier()
    if master:
        if os.path.exists(final):  # an incomplete or damaged folder of that name: kept, renamed
            set_aside(final, "replaced")
        os.replace(tmp, final)
        for old in list_checkpoints(cfg.out)[:-cfg.keep] if cfg.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def rng_states():
    """Every RNG state of this process as tensors and plain numbers, so that the file loads with
    torch.load(weights_only=True): a checkpoint from elsewhere cannot run code when resumed."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_states(path):
    try:
        rng = torch.load(path, weights_only=True)
    except Exception as e:  # a pickle with objects (or a damaged file) is refused, never run
        raise RuntimeError(f"refusing to load {path}: not a plain tensor file ({type(e).__name__}); delete it "
                           "to resume without this rank's RNG states") from e
    version, mt, gauss = rng["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def set_aside(path, why):
    """Rename path to path.<why> (or .<why>-2, ...) out of list_checkpoints' way; returns the name."""
    target, k = f"{path}.{why}", 1
    while os.path.exists(target):
        k += 1
        target = f"{path}.{why}-{k}"
    os.replace(path, target)
    return target


def list_checkpoints(out):
    """Complete checkpoints this code wrote, oldest first: folders named exactly step-NNNNNN that
    hold resume/state.json (written last, before the folder gets its name). Anything else in
    --out (a user's step-000004-best copy, step-notes.txt, an empty step-000099/) is neither
    resumed from nor pruned."""
    if not os.path.isdir(out):
        return []
    found = [(int(d[5:]), os.path.join(out, d)) for d in os.listdir(out) if re.fullmatch(r"step-\d{6}", d)]
    return [p for _, p in sorted(found) if os.path.isfile(os.path.join(p, "resume", "state.json"))]


def load_resume(path, loss_module, opt, rank):
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    import torch.distributed.checkpoint as dcp
    msd, osd = get_state_dict(loss_module, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=os.path.join(path, "resume"))
    set_state_dict(loss_module, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    # The data order depends only on (seed, epoch, step) and DCP reshards, so a run may resume on
    # another number of processes; only the RNG states of ranks the old run did not have are
    # missing (nothing in this loop draws random numbers, they are restored for user additions).
    rng_file = os.path.join(path, "resume", f"rng-rank{rank}.pt")
    if os.path.exists(rng_file):
        set_rng_states(rng_file)
    with open(os.path.join(path, "resume", "state.json")) as f:
        return json.load(f)


def resume_newest(ckpts, loss_module, opt, rank, distributed, device, log=print):
    """Load the newest checkpoint that loads on every rank; a damaged one (a truncated shard, a
    broken state file) is reported and the one before it tried. Returns (path, state)."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception
    for path in reversed(ckpts):
        try:
            state, error = load_resume(path, loss_module, opt, rank), None
        except (Exception, CheckpointException) as e:
            state, error = None, e
        ok = torch.tensor([error is None], dtype=torch.int32, device=device)
        if distributed:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if int(ok):
            return path, state
        if isinstance(error, RuntimeError) and str(error).startswith("refusing"):
            raise error
        barrier()
        moved = set_aside(path, "damaged") if rank == 0 else path + ".damaged"
        barrier()
        log(f"cannot resume from {path} ({type(error).__name__ if error else 'another rank failed'}: "
            f"{str(error)[:200] if error else ''}); moved it to {moved} and trying the checkpoint before it")
    raise RuntimeError(f"no checkpoint in {os.path.dirname(ckpts[-1])} loads; see the messages above")


# What a resumed run must share with the run that wrote the checkpoint: the data and its order,
# the step count the schedule spans, and the optimization itself.
RESUME_KEYS = ("data", "data_sha1", "global_batch", "epochs", "seed", "max_len", "min_pixels", "max_pixels",
               "length_group", "packing", "lr", "min_lr_ratio", "warmup_ratio", "weight_decay", "lr_vision",
               "lr_merger", "lr_llm", "clip", "beta1", "beta2", "eps")


def file_sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_resume_settings(ckpt, cfg, data_sha1, say=print):
    """Refuse (or, with --force, warn) when the settings or the data file differ from the ones the
    checkpoint was trained with, listing every difference."""
    with open(os.path.join(ckpt, "train_config.json")) as f:
        saved = json.load(f)
    now = {**dataclasses.asdict(cfg), "data_sha1": data_sha1}
    changed = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in RESUME_KEYS if k in saved and saved[k] != now[k]]
    if changed and not cfg.force:
        raise click.UsageError(f"--resume from {ckpt} with changed settings ({'; '.join(changed)}); restore them, "
                               "start a new --out, or pass --force to continue anyway")
    if changed:
        say(f"warning: resuming from {ckpt} with changed settings ({'; '.join(changed)}), as --force asks")


def barrier():
    if dist.is_initialized():
        dist.barrier()
