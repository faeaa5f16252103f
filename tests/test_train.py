"""train.py on CPU with a tiny Qwen2.5-VL: schedule, batch plan, exact loss normalization under
DDP (2 gloo processes via torchrun) and FSDP2, exact resume, transformers-loadable checkpoints.

    python -m pytest -q tests/test_train.py
"""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import click
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import checkpoint
import data
import train
from demo import synthetic
from image_processor import ImageProcessor
from infimed import QwenVL, QwenVLConfig, VisionConfig
from train import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)  # a tiny model: threads only add overhead
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


# ------------------------------------------------------------------------------- fixtures
def tiny_config(tok):
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("bos_token_id", "<|endoftext|>"), ("eos_token_id", "<|im_end|>")]}
    vision = VisionConfig(depth=2, hidden_size=32, out_hidden_size=48, intermediate_size=64, num_heads=2,
                          fullatt_block_indexes=[1], window_size=56)  # 56 px = 2x2 merged units per window
    return QwenVLConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 2, 2],
                        tie_word_embeddings=True, vision=vision, **ids)


def write_records(root, n, with_images=True, seed=0):
    """Color questions: images of different sizes, answers of very different lengths, and
    text-only records, so micro-batches differ in supervised token counts and modality."""
    g = torch.Generator().manual_seed(seed)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    names = list(COLORS)
    records = []
    for i in range(n):
        c = names[int(torch.randint(4, (1,), generator=g))]
        if with_images and i % 3 != 2:
            w, h = [(56, 56), (112, 56), (84, 112)][i % 3 if i % 3 < 2 else 2]
            path = os.path.join(root, "img", f"{i}.png")
            Image.new("RGB", (w, h), COLORS[c]).save(path)
            answer = c if i % 2 else f"The square is {c}. " * (1 + i % 5)
            records.append({"messages": [{"role": "user", "content": "<image>What color is the square?"},
                                         {"role": "assistant", "content": answer}], "images": [path]})
        else:
            records.append({"messages": [{"role": "user", "content": f"Say {c} {1 + i % 4} times."},
                                         {"role": "assistant", "content": " ".join([c] * (1 + i % 4))}],
                            "images": []})
    return records


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model dir (config, safetensors, tokenizer) and train JSONL files."""
    root = str(tmp_path_factory.mktemp("train"))
    texts = ["What color is the square? The square is red green blue yellow. Say times."] * 20
    tok = synthetic.build_tokenizer(texts, os.path.join(root, "model"), vocab_size=300)
    torch.manual_seed(0)
    QwenVL(tiny_config(tok)).save_pretrained(os.path.join(root, "model"))
    paths = {}
    for name, kw in {"mixed": {}, "text": {"with_images": False}}.items():
        paths[name] = os.path.join(root, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            for r in write_records(root, 16, seed=1, **kw):
                f.write(json.dumps(r) + "\n")
    return {"root": root, "model": os.path.join(root, "model"), **paths}


@pytest.fixture(scope="module")
def reference(setup):
    """One process, the whole 8-sample global batch in one forward, 2 epochs = 4 steps: the run
    that DDP, FSDP and resumed runs must reproduce, and whose checkpoint transformers loads."""
    cfg = config(setup, "reference", global_batch=8, micro_batch=8, epochs=2)
    model = train.train(cfg)
    return cfg, model


def config(setup, out, **kw):
    base = dict(model=setup["model"], data=setup["mixed"], out=os.path.join(setup["root"], out), epochs=1,
                global_batch=8, micro_batch=8, max_len=256, min_pixels=3136, max_pixels=12544, lr=1e-3,
                warmup_ratio=0.25, weight_decay=0.1, workers=0, seed=0, save_every=1000)
    return TrainConfig(**dict(base, **kw))


def torchrun(cfg, nproc=2, timeout=300):
    """Run the real command line: torchrun --nproc_per_node 2 train.py --flag value ..."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            os.path.join(ROOT, "train.py")]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.type is bool:
            args += [f"--{f.name.replace('_', '-')}"] if v else []
        elif v is not None:
            args += [f"--{f.name.replace('_', '-')}", str(v)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def final_weights(cfg):
    ckpt = checkpoint.list_checkpoints(cfg.out)[-1]
    return load_file(os.path.join(ckpt, "model.safetensors"))


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def log(cfg):
    with open(os.path.join(cfg.out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_steps(a, b):
    """Two runs that must make the same updates log, step for step, the same supervised token
    count, loss and pre-clip gradient norm. The norm is what pins the gradient's scale: clipping
    (norm about 2.5, clip 1) and AdamW both hide a uniformly scaled gradient from the weights.
    Measured over DDP, FSDP, resharded resume and packing: loss 9.3e-7, grad norm 4.8e-7 (2 ulp)."""
    a, b = log(a), log(b)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["sup_tokens"] for r in a] == [r["sup_tokens"] for r in b]
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) <= 2e-6
    assert max(abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(a, b)) <= 1e-6


def first_step_samples(data_path, setup, global_batch=8):
    """The encoded samples of a run's first optimizer step (seed 0) as the sampler train.py draws
    from orders them; skip markers stay in the list."""
    ds = make_dataset(setup, data_path)
    sampler = data.LengthGroupedSampler(ds.lengths, global_batch, seed=0, group_chunks=TrainConfig.length_group)
    sampler.set_epoch(0)
    return [ds[i] for i in sampler.plan()[0]]


def transformers_step(model_dir, samples):
    """Loss and pre-clip gradient norm of one step over `samples` by transformers'
    Qwen2_5_VLForConditionalGeneration on the same weights: the sum of token cross-entropies over
    the supervised next tokens divided by their count, and the global L2 norm of its gradient over
    every parameter (the set train.py clips: nothing is frozen)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    batch = data.collate(samples, pad_id=0)
    images = {}
    if len(batch["image_grid_thw"]):
        images = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
    # transformers 5.x applies M-RoPE to image tokens only when told which tokens they are
    mm = (batch["input_ids"] == hf.config.image_token_id).long()
    logits = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], mm_token_type_ids=mm,
                **images).logits
    target = batch["labels"][:, 1:]  # right padding: labels are -100 on padding already
    sup = target != -100
    loss = torch.nn.functional.cross_entropy(logits[:, :-1][sup], target[sup], reduction="sum") / int(sup.sum())
    loss.backward()
    norm = sum(p.grad.double().pow(2).sum() for p in hf.parameters() if p.grad is not None).sqrt()
    return float(loss), float(norm), int(sup.sum())


# ------------------------------------------------------------------------------ pure pieces
def test_lr_schedule_matches_formula():
    cfg = TrainConfig(lr=2e-5, min_lr_ratio=0.1, warmup_ratio=0.05)
    total = 45  # warmup = ceil(0.05 x 45) = 3 steps, then 42 cosine steps
    floor = 2e-6
    assert train.lr_at(0, total, cfg) == pytest.approx(2e-5 / 3)
    assert train.lr_at(2, total, cfg) == pytest.approx(2e-5)  # warmup end: the peak
    assert train.lr_at(2 + 21, total, cfg) == pytest.approx((2e-5 + floor) / 2)  # half-way down the cosine
    assert train.lr_at(2 + 7, total, cfg) == pytest.approx(floor + 0.5 * (2e-5 - floor) * (1 + math.cos(math.pi / 6)))
    assert train.lr_at(total - 1, total, cfg) == pytest.approx(floor)  # last step lands on the floor


def test_global_batch_must_split_into_world_micro_accum():
    assert train.accumulation_steps(TrainConfig(global_batch=64, micro_batch=4), world=2) == 8
    with pytest.raises(click.UsageError, match="not a multiple of world size 2 x micro-batch 3"):
        train.accumulation_steps(TrainConfig(global_batch=64, micro_batch=3), world=2)


def test_plan_gives_every_sample_once_and_same_steps_for_any_world_size():
    lengths = [int(x) for x in torch.randint(10, 500, (27,), generator=torch.Generator().manual_seed(0))]
    sampler = data.LengthGroupedSampler(lengths, batch_size=8, seed=5)
    two = train.plan_epoch(sampler, epoch=0, world=2, accum=2)
    one = train.plan_epoch(sampler, epoch=0, world=1, accum=1)
    flat = [i for s in two for r in s for mb in r for i in mb]
    assert sorted(flat) == list(range(27))  # 27 samples in 4 steps, none repeated or dropped
    assert len(two) == len(one) == 4
    for s2, s1 in zip(two, one):  # the same samples per optimizer step
        assert sorted(i for r in s2 for mb in r for i in mb) == sorted(s1[0][0])
        assert all(len(r) == 2 for r in s2)  # every rank runs accum micro-batches
        sizes = [len(mb) for r in s2 for mb in r]
        assert max(sizes) - min(sizes) <= 1
    assert train.plan_epoch(sampler, epoch=1, world=2, accum=2) != two  # a new order each epoch


def test_flops_count_matches_hand_formula():
    cfg = QwenVLConfig(hidden_size=64, num_hidden_layers=3, vocab_size=1000,
                       vision=VisionConfig(depth=4, hidden_size=32, fullatt_block_indexes=[3], window_size=112))
    labels = torch.full((1, 10), -100)
    labels[0, 6:] = 1  # 4 labels; 3 count (the first sits across the 1|2 sample boundary)
    batch = {"attention_mask": torch.tensor([[1] * 6 + [2] * 4 + [0] * 2]),
             "labels": torch.cat([labels, torch.full((1, 2), -100)], 1), "image_grid_thw": torch.tensor([[1, 8, 16]])}
    text = 6 * 500 * 10 + 6 * 64 * 1000 * 3 + 6 * 3 * 64 * (6 ** 2 + 4 ** 2)  # layers, head, causal attention
    patches = 128  # 8 x 16; windows of 8 x 8 = 64 patches in 3 blocks, the whole image in 1
    vision = 6 * 700 * patches + 12 * 32 * patches * (3 * 64 + 1 * patches)
    assert train.flops_per_step([batch], cfg, n_text=500, n_vision=700) == text + vision


# ------------------------------------------------------------------------------------- loss
def test_loss_sums_cross_entropy_of_supervised_next_tokens_only(setup):
    torch.manual_seed(0)
    model = QwenVL.from_pretrained(setup["model"], dtype=torch.float32)
    V = model.config.vocab_size
    ids = torch.randint(0, 200, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    mask = torch.tensor([[1] * 6 + [2] * 6, [1] * 10 + [0] * 2])  # row 0 packs 2 samples; row 1 padded
    labels[1, 10:] = -100
    with torch.no_grad():
        got = train.SFTLoss(model)(ids, labels, mask)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
    want = 0.0
    for b in range(2):
        for t in range(11):
            same = mask[b, t] == mask[b, t + 1]
            if labels[b, t + 1] != -100 and same:
                want = want + torch.nn.functional.cross_entropy(logits[b, t].view(1, V), ids[b, t + 1:t + 2])
    assert abs(float(got) - float(want)) <= 1e-5  # measured 3.8e-6 on a sum of 64 (1 fp32 ulp)
    # row 0: the target across the 1|2 boundary is excluded
    assert train.supervised_count({"labels": labels, "attention_mask": mask}) == 6 + 5


def test_first_step_loss_and_gradient_norm_match_transformers(setup, reference):
    """The one-process run that DDP, FSDP, packed and resumed runs are compared against is itself
    pinned: its first step's loss and pre-clip gradient norm are those transformers computes on the
    same initial weights and the same encoded samples."""
    cfg, _ = reference
    samples = first_step_samples(cfg.data, setup)
    loss, norm, n_sup = transformers_step(setup["model"], samples)
    first = log(cfg)[0]
    assert first["sup_tokens"] == n_sup
    assert abs(first["loss"] - loss) <= 5e-7  # measured 1.2e-7
    assert abs(first["grad_norm"] - norm) <= 5e-7  # measured 1.7e-7


# ------------------------------------------------------------------------------- distributed
@pytest.mark.slow  # torchrun, 2 processes
def test_two_process_ddp_equals_one_process_whole_batch(setup, reference):
    """2 gloo ranks x micro-batch 2 x accumulation 2, micro-batches of very different supervised
    token counts, some text-only (the zero-weighted vision pass keeps DDP's graph static), against
    one process doing the 8-sample global batch in a single forward."""
    one, _ = reference
    ddp = config(setup, "ddp", global_batch=8, micro_batch=2, epochs=2)
    torchrun(ddp)
    ds = make_dataset(setup)
    sampler = data.LengthGroupedSampler(ds.lengths, 8, seed=0, group_chunks=TrainConfig.length_group)
    steps = train.plan_epoch(sampler, 0, 2, 2)
    sup = [train.supervised_count(data.collate([ds[i]], 0)) for i in range(len(ds))]
    micro = [sum(sup[i] for i in mb) for s in steps for r in s for mb in r]
    assert max(micro) >= 3 * min(micro)  # really uneven micro-batches
    assert any(all(not ds.records[i]["images"] for i in mb) for s in steps for r in s for mb in r)  # a text-only one
    assert_same_steps(one, ddp)
    assert max_diff(final_weights(one), final_weights(ddp)) <= 3e-6  # measured 1.2e-6


@pytest.mark.slow  # torchrun, 2 processes
def test_text_only_batches_do_not_crash_ddp_and_leave_vision_untouched(setup):
    cfg = config(setup, "text", data=setup["text"], global_batch=4, micro_batch=1, weight_decay=0.0)
    torchrun(cfg)
    before = load_file(os.path.join(setup["model"], "model.safetensors"))
    after = final_weights(cfg)
    vision = [k for k in before if k.startswith("visual.")]
    assert max(float((before[k] - after[k]).abs().max()) for k in vision) == 0.0  # exactly zero grads
    assert float((before["model.norm.weight"] - after["model.norm.weight"]).abs().max()) > 0


@pytest.mark.slow  # torchrun, 2 processes
def test_fsdp_two_processes_equals_one_process(setup, reference):
    one, _ = reference
    cfg = config(setup, "fsdp", global_batch=8, micro_batch=2, epochs=2, fsdp=True)
    torchrun(cfg)
    assert_same_steps(one, cfg)
    assert max_diff(final_weights(one), final_weights(cfg)) <= 3e-6  # measured 1.2e-6


# ------------------------------------------------------------------------------- options
def test_packing_gives_the_same_update_as_padding(setup, reference):
    """The loss is a per-token mean over the step, so packing samples into shared rows changes
    the batch layout but not the gradient."""
    one, _ = reference
    cfg = dataclasses.replace(one, out=os.path.join(setup["root"], "packed"), packing=True, max_len=1024)
    train.train(cfg)
    assert [r["tokens"] for r in log(cfg)] == [r["tokens"] for r in log(one)]
    assert [r["padding"] for r in log(cfg)] == [0.0] * 4 and log(one)[0]["padding"] > 0.1  # one row per step
    assert_same_steps(one, cfg)
    assert max_diff(final_weights(one), final_weights(cfg)) <= 3e-6  # measured 1.0e-6


def test_activation_checkpointing_gives_the_same_update(setup, reference):
    one, _ = reference
    cfg = dataclasses.replace(one, out=os.path.join(setup["root"], "ckpt"), grad_ckpt=True)
    train.train(cfg)
    # the backward recomputes the very same forward: bit-identical losses, norms and weights
    assert [(r["loss"], r["grad_norm"]) for r in log(one)] == [(r["loss"], r["grad_norm"]) for r in log(cfg)]
    assert max_diff(final_weights(one), final_weights(cfg)) == 0.0


def gradients_at_first_step(cfg, monkeypatch):
    """Runs one step of cfg and returns the gradients AdamW received (after clipping), in parameter order."""
    seen, real_step = [], torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return real_step(self, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", spy)
        train.train(dataclasses.replace(cfg, stop_after=1))
    return seen[0]


def test_clipping_scales_the_gradient_down_to_the_clip_norm(setup, monkeypatch):
    """--clip 0.5, below the gradient's norm: AdamW receives the unclipped gradient (of a --clip 0
    run) times 0.5 / its norm, whose norm is then 0.5; the log keeps the norm before clipping."""
    free_cfg = config(setup, "clip_off", clip=0.0)
    free = gradients_at_first_step(free_cfg, monkeypatch)
    clip_cfg = config(setup, "clip_half", clip=0.5)
    clipped = gradients_at_first_step(clip_cfg, monkeypatch)
    norm = float(torch.cat([g.double().flatten() for g in free]).norm())
    assert norm > 2  # --clip 0 left it alone, and 0.5 is well below it
    for cfg in (free_cfg, clip_cfg):
        assert abs(log(cfg)[0]["grad_norm"] - norm) <= 5e-7  # measured 2.2e-7 (fp32 vs float64 sum)
    assert max(float((c - f * (0.5 / norm)).abs().max()) for c, f in zip(clipped, free)) <= 5e-8  # measured 1.9e-8
    assert abs(float(torch.cat([g.double().flatten() for g in clipped]).norm()) - 0.5) <= 3e-7  # measured 1.4e-7


# by name, as the parameter names read: biases and norm weights (RMSNorm, the vision LayerNorms, the merger's ln_q)
NO_DECAY = re.compile(r"\.bias$|(norm\d?|layernorm|ln_q)\.weight$")


def test_weight_decay_applies_to_matrices_only(setup, monkeypatch):
    """With every gradient exactly zero (the loss times 0), AdamW's step changes weights only by its
    decoupled decay, p x (1 - lr x wd) = p x 0.95 at lr 0.01 (the first step is the last of 1
    warmup step) and wd 5: linear weights, the embedding and the Conv3d patch embed shrink; biases
    and norm weights stay exactly as they were."""
    real = train.SFTLoss.forward
    monkeypatch.setattr(train.SFTLoss, "forward", lambda self, *a, **k: real(self, *a, **k) * 0.0)
    cfg = config(setup, "decay", lr=1e-2, weight_decay=5.0, warmup_ratio=0.5, epochs=1, stop_after=1)  # 2 steps
    train.train(cfg)
    assert log(cfg)[0]["lr"] == 1e-2
    before, after = load_file(os.path.join(setup["model"], "model.safetensors")), final_weights(cfg)
    kept = {k for k in before if NO_DECAY.search(k)}
    assert {"model.norm.weight", "visual.merger.ln_q.weight", "visual.blocks.0.norm1.weight",
            "model.layers.0.self_attn.q_proj.bias"} <= kept
    assert {"model.embed_tokens.weight", "visual.patch_embed.proj.weight"} <= set(before) - kept
    assert all(torch.equal(after[k], before[k]) for k in kept)
    assert all(torch.equal(after[k], before[k] * 0.95) for k in set(before) - kept)  # the same fp32 product


def test_per_part_learning_rates_reach_their_parts_and_follow_the_schedule(setup):
    """--lr-vision, --lr-merger and --lr-llm, non-zero and unlike --lr: AdamW's first step moves each
    weight by lr x g / (|g| + eps), about lr x sign(g), so the largest move in every tensor (biases
    and norms included) is its part's rate times the schedule's factor, 1/2 on the first of 2
    warmup steps."""
    # eps 1e-15: the vision tower's gradients go down to 1e-6, where the default 1e-8 shortens the move by 0.6%
    cfg = config(setup, "part_lr", lr=1e-3, lr_vision=4e-4, lr_merger=2e-3, lr_llm=7e-4, weight_decay=0.0, eps=1e-15,
                 epochs=2, warmup_ratio=0.5, stop_after=1)  # 4 steps, 2 of warmup
    train.train(cfg)
    assert log(cfg)[0]["lr"] == 0.5e-3
    before, after = load_file(os.path.join(setup["model"], "model.safetensors")), final_weights(cfg)
    worst = 0.0
    for k in before:
        part_lr = 2e-3 if k.startswith("visual.merger.") else 4e-4 if k.startswith("visual.") else 7e-4
        moved = float((after[k] - before[k]).abs().max())
        worst = max(worst, abs(moved / (0.5 * part_lr) - 1))
    assert worst <= 5e-4  # measured 1.7e-4: a weight of 1.0 moved by 2e-4 keeps 3 to 4 digits of the move in fp32


def test_empty_micro_batches_add_nothing_to_the_step(setup):
    """Global batch 12 in micro-batches of 1, but the 16 samples make 2 steps of 8: each step has 4
    empty micro-batches (run as a blank stand-in with no supervised token). Same steps and update
    as one forward over each step's 8 samples."""
    sampler = data.LengthGroupedSampler(train_lengths(setup), 12, seed=0, group_chunks=TrainConfig.length_group)
    assert [len(b) for b in sampler.plan()] == [8, 8]
    whole = config(setup, "empty_whole", global_batch=12, micro_batch=12)
    accum = config(setup, "empty_accum", global_batch=12, micro_batch=1)
    train.train(whole)
    train.train(accum)
    assert_same_steps(whole, accum)
    assert max_diff(final_weights(whole), final_weights(accum)) <= 3e-6  # measured 1.1e-6


@pytest.mark.slow  # torchrun, 2 processes
def test_a_rank_with_only_empty_micro_batches_still_joins_the_step(setup, tmp_path):
    """3 samples, global batch 6 on 2 ranks x accumulation 3: rank 0's three micro-batches are all
    empty. It still runs forward and backward, so rank 1's gradient all-reduce does not wait
    forever, and the update equals one process's single forward over the 3 samples."""
    path = str(tmp_path / "three.jsonl")
    with open(setup["mixed"]) as f, open(path, "w") as g:
        g.writelines(f.readlines()[:3])
    one = config(setup, "three_one", data=path, global_batch=6, micro_batch=6, epochs=2)
    two = config(setup, "three_ddp", data=path, global_batch=6, micro_batch=1, epochs=2)
    lengths = make_dataset(setup, path).lengths
    (rank0, rank1), = train.plan_epoch(data.LengthGroupedSampler(lengths, 6), 0, world=2, accum=3)  # one step
    assert rank0 == [[], [], []] and sorted(i for mb in rank1 for i in mb) == [0, 1, 2]
    train.train(one)
    torchrun(two, timeout=120)  # a rank that skipped its backward: a collective mismatch, or a hang up to here
    assert_same_steps(one, two)
    assert max_diff(final_weights(one), final_weights(two)) <= 1e-6  # measured 4.4e-7


def test_frozen_parts_stay_fixed(setup):
    cfg = config(setup, "frozen", lr_vision=0.0, lr_merger=0.0, epochs=1)
    train.train(cfg)
    before, after = load_file(os.path.join(setup["model"], "model.safetensors")), final_weights(cfg)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith("visual.") for k in changed)
    assert "model.embed_tokens.weight" in changed


# ------------------------------------------------------------------------------ checkpoints
def test_resume_continues_exactly(setup, reference):
    """4 steps straight == 1 step, stop, resume, 3 steps: same data order, same weights."""
    straight, _ = reference
    part = dataclasses.replace(straight, out=os.path.join(setup["root"], "resumed"), stop_after=1)
    train.train(part)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(part.out)] == ["step-000001"]
    train.train(dataclasses.replace(part, stop_after=0, resume=True))
    a, b = log(straight), log(part)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    # same data and same state after the resume: identical per-step losses and token counts
    assert [(r["loss"], r["sup_tokens"], r["tokens"]) for r in a] == \
        [(r["loss"], r["sup_tokens"], r["tokens"]) for r in b]
    assert max_diff(final_weights(straight), final_weights(part)) == 0.0


@pytest.mark.slow  # torchrun, 2 processes
def test_resume_on_another_number_of_processes(setup, reference):
    """A step holds the same samples whatever the world size and the resume state is resharded,
    so 1 step on 2 DDP ranks, then 3 steps resumed in one process, equal 4 steps in one process."""
    straight, _ = reference
    two = config(setup, "reshard", global_batch=8, micro_batch=2, epochs=2, stop_after=1)
    torchrun(two)
    train.train(dataclasses.replace(two, micro_batch=8, stop_after=0, resume=True))
    assert [r["step"] for r in log(two)] == [1, 2, 3, 4]
    assert_same_steps(straight, two)  # step 1 from the 2 ranks, steps 2-4 from the resumed process
    assert max_diff(final_weights(straight), final_weights(two)) <= 3e-6  # measured 1.2e-6


def test_checkpoint_loads_in_transformers_with_same_logits(setup, reference):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    cfg, model = reference
    ckpt = checkpoint.list_checkpoints(cfg.out)[-1]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "preprocessor_config.json"):
        assert os.path.exists(os.path.join(ckpt, name)), name
    assert json.load(open(os.path.join(ckpt, "preprocessor_config.json")))["max_pixels"] == 12544
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.chat_template == synthetic.QWEN2_5_VL_CHAT_TEMPLATE
    hf, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    proc = ImageProcessor(min_pixels=3136, max_pixels=12544)
    ds = data.SFTDataset(setup["mixed"], tok, proc, 256)
    batch = data.collate([ds[0], ds[1], ds[2]], tok.pad_token_id)
    hf.eval(), model.eval()
    mm = (batch["input_ids"] == model.config.image_token_id).long()
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"], batch["attention_mask"])
        theirs = hf(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                    image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"],
                    mm_token_type_ids=mm).logits
    keep = batch["attention_mask"].bool()
    assert float((ours[keep] - theirs[keep]).abs().max()) <= 5e-7  # measured 2.4e-7 on logits up to 1.0


def test_checkpoint_generation_config_stops_where_evaluation_stops(setup, reference):
    """Without one in the base model, the checkpoint's generation_config.json is Qwen2.5-VL-Instruct's
    shape: stop at <|im_end|> or <|endoftext|> (the ids the native backend stops at), pad with the
    batches' pad id; transformers reads it."""
    from transformers import GenerationConfig
    cfg, _ = reference
    ckpt = checkpoint.list_checkpoints(cfg.out)[-1]
    tok = data.load_tokenizer(ckpt)
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert json.load(open(os.path.join(ckpt, "generation_config.json"))) == \
        {"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot}
    assert data.stop_ids(tok) == [im_end, eot] and data.pad_id(tok) == eot
    gen = GenerationConfig.from_pretrained(ckpt)
    assert gen.eos_token_id == [im_end, eot] and gen.pad_token_id == eot


def test_crash_during_save_keeps_last_checkpoint_and_resume_recovers(setup, reference, monkeypatch):
    straight, _ = reference
    cfg = dataclasses.replace(straight, out=os.path.join(setup["root"], "crash"), save_every=1)
    real_save, calls = QwenVL.save_pretrained, []

    def dies_on_second_save(self, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C half-way through writing step 2
        return real_save(self, path, **kw)

    monkeypatch.setattr(QwenVL, "save_pretrained", dies_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg)
    monkeypatch.setattr(QwenVL, "save_pretrained", real_save)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(cfg.out)] == ["step-000001"]
    assert os.path.isdir(os.path.join(cfg.out, ".tmp-step-000002"))  # the half-written one, never listed
    with pytest.raises(click.UsageError, match="pass --resume"):  # never silently overwrite a run
        train.train(cfg)
    train.train(dataclasses.replace(cfg, resume=True))
    assert not os.path.exists(os.path.join(cfg.out, ".tmp-step-000002"))
    assert [r["step"] for r in log(cfg)] == [1, 2, 3, 4]
    assert max_diff(final_weights(straight), final_weights(cfg)) == 0.0
    assert len(checkpoint.list_checkpoints(cfg.out)) == cfg.keep  # older ones pruned


def test_nan_loss_stops_with_step_and_sample_ids(setup, tmp_path):
    model = QwenVL.from_pretrained(setup["model"], dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    bad = str(tmp_path / "bad")
    model.save_pretrained(bad)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        os.link(os.path.join(setup["model"], f), os.path.join(bad, f))
    with pytest.raises(FloatingPointError, match=r"step 0: loss nan.*not applied.*Sample indices") as e:
        train.train(config(setup, "nan", model=bad))
    sampler = data.LengthGroupedSampler(train_lengths(setup), 8, seed=0, group_chunks=TrainConfig.length_group)
    first_step = train.plan_epoch(sampler, 0, 1, 1)[0][0][0]
    assert sorted(json.loads(str(e.value).split("): ")[-1])) == sorted(first_step)
    assert not checkpoint.list_checkpoints(os.path.join(setup["root"], "nan"))


# -------------------------------------------------------------------------------- learning
def test_training_drives_loss_down(setup):
    cfg = config(setup, "learn", global_batch=8, micro_batch=8, epochs=15, lr=1e-2, warmup_ratio=0.1)
    train.train(cfg)
    losses = [r["loss"] for r in log(cfg)]
    assert sum(losses[-2:]) / 2 < 0.4 * losses[0], losses


# ------------------------------------------------------------------------------- helpers
def train_lengths(setup):
    return make_dataset(setup).lengths


def make_dataset(setup, data_path=None):
    tok = data.load_tokenizer(setup["model"])
    return data.SFTDataset(data_path or setup["mixed"], tok, ImageProcessor(min_pixels=3136, max_pixels=12544),
                           256)


# ------------------------------------------------------------------------------ damaged run folders
def two_checkpoints(setup, name, **kw):
    cfg = config(setup, name, save_every=1, keep=5, stop_after=2, epochs=2, **kw)  # 4 steps in all
    train.train(cfg)
    return cfg


def test_only_complete_checkpoints_this_code_wrote_are_resumed_from_or_pruned(setup):
    cfg = two_checkpoints(setup, "strays")
    out = cfg.out
    open(os.path.join(out, "step-000005.bak"), "w").close()
    open(os.path.join(out, "step-notes.txt"), "w").close()
    os.makedirs(os.path.join(out, "step-000099"))  # empty: no resume/state.json
    import shutil
    shutil.copytree(os.path.join(out, "step-000001"), os.path.join(out, "step-000004-best"))
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(out)] == ["step-000001", "step-000002"]
    train.train(dataclasses.replace(cfg, stop_after=3, keep=2, resume=True))
    assert [r["step"] for r in log(cfg)] == [1, 2, 3]  # resumed at 2, the newest real checkpoint
    assert sorted(os.listdir(out)) == ["log.jsonl", "step-000002", "step-000003", "step-000004-best",
                                       "step-000005.bak", "step-000099", "step-notes.txt"]


class Payload:
    def __reduce__(self):
        return (open, (os.path.join(os.environ.get("PAYLOAD_DIR", "/tmp"), "payload-ran"), "w"))


def test_rng_states_are_plain_tensors_and_a_pickled_payload_is_refused(setup, tmp_path, monkeypatch):
    cfg = two_checkpoints(setup, "rng")
    rng_file = os.path.join(cfg.out, "step-000002", "resume", "rng-rank0.pt")
    states = torch.load(rng_file, weights_only=True)  # loads without unpickling any object
    assert set(states) == {"python", "numpy", "torch", "cuda"}
    monkeypatch.setenv("PAYLOAD_DIR", str(tmp_path))
    torch.save({"python": Payload()}, rng_file)
    with pytest.raises(RuntimeError, match="refusing to load .*rng-rank0.pt"):
        train.train(dataclasses.replace(cfg, stop_after=3, resume=True))
    assert not os.path.exists(tmp_path / "payload-ran")


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(setup, capsys):
    cfg = two_checkpoints(setup, "damaged")
    shard = next(f for f in os.listdir(os.path.join(cfg.out, "step-000002", "resume")) if f.endswith(".distcp"))
    path = os.path.join(cfg.out, "step-000002", "resume", shard)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with open(os.path.join(cfg.out, "log.jsonl"), "a") as f:
        f.write('{"step": 3, "loss": 1.')  # a line cut by a crash
    train.train(dataclasses.replace(cfg, stop_after=3, resume=True))
    said = capsys.readouterr().out
    assert "cannot resume from" in said and "step-000002" in said and "dropped 1 unreadable line" in said
    assert [r["step"] for r in log(cfg)] == [1, 2, 3]  # resumed at 1: steps 2 and 3 run again
    assert os.path.isdir(os.path.join(cfg.out, "step-000002.damaged"))  # kept for inspection, out of the way
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(cfg.out)] == ["step-000001", "step-000002",
                                                                             "step-000003"]


@pytest.mark.parametrize("change", [{"lr": float("inf")}, {"lr": 1e39}, {"lr": 0.0}, {"warmup_ratio": 1.5},
                                    {"global_batch": 0},
                                    {"lr_vision": float("nan")}, {"epochs": 0}])
def test_settings_that_would_waste_a_run_are_refused(setup, change):
    with pytest.raises(click.UsageError, match="invalid settings: --" + next(iter(change)).replace("_", "-")):
        train.train(config(setup, "invalid", **change))


def test_no_checkpoint_is_written_when_the_update_leaves_non_finite_weights(setup, monkeypatch):
    """The loss and gradient norm of the step were finite; the update itself broke a weight
    (simulated: AdamW's step writes an inf). The run stops before saving, naming the step."""
    real_step = torch.optim.AdamW.step

    def broken(self, *a, **k):
        out = real_step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", broken)
    cfg = config(setup, "blowup", stop_after=1)
    with pytest.raises(FloatingPointError, match="step 1: the weights are no longer finite"):
        train.train(cfg)
    assert checkpoint.list_checkpoints(cfg.out) == [] and not os.path.exists(os.path.join(cfg.out, "step-000001"))


def test_resume_with_changed_settings_or_data_is_refused_unless_forced(setup, tmp_path, capsys):
    data_copy = str(tmp_path / "data.jsonl")
    with open(setup["mixed"]) as f, open(data_copy, "w") as g:
        g.write(f.read())
    cfg = config(setup, "changed", data=data_copy, stop_after=1)
    train.train(cfg)
    with pytest.raises(click.UsageError, match=r"changed settings \(lr: 0.001 -> 0.002\).*--force"):
        train.train(dataclasses.replace(cfg, lr=2e-3, stop_after=2, resume=True))
    with open(data_copy, "a") as g:  # same path, other content
        g.write(open(setup["text"]).readline())
    with pytest.raises(click.UsageError, match="data_sha1"):
        train.train(dataclasses.replace(cfg, stop_after=2, resume=True))
    train.train(dataclasses.replace(cfg, stop_after=2, resume=True, force=True))
    assert "warning: resuming from" in capsys.readouterr().out and [r["step"] for r in log(cfg)] == [1, 2]


def test_every_flag_of_the_command_line_has_a_help_text():
    """python train.py --help: one option per TrainConfig field, each with its setting's help."""
    from click.testing import CliRunner
    out = CliRunner().invoke(train.main, ["--help"]).output
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help") and f"--{f.name.replace('_', '-')} " in out, f.name
    assert "paper: 3 epochs" in out
    assert "Missing option '--model'" in CliRunner().invoke(train.main, ["--data", "x.jsonl"]).output

def _data_with_broken_images(setup, tmp_path, broken):
    """The mixed training file with the first `broken` image records' files truncated (their
    headers read, their pixels do not)."""
    recs = [json.loads(line) for line in open(setup["mixed"])]
    n = 0
    for r in recs:
        if r["images"] and n < broken:
            path = str(tmp_path / f"broken{n}.png")
            Image.new("RGB", (56, 56), (200, 10, 10)).save(path)
            with open(path, "r+b") as f:
                f.truncate(60)
            r["images"], n = [path], n + 1
    path = str(tmp_path / "broken.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    return path


def test_decode_time_skips_are_totalled_by_reason_and_survive_a_resume(setup, tmp_path, capsys):
    data_path = _data_with_broken_images(setup, tmp_path, 2)
    straight = config(setup, "skips", data=data_path, epochs=2, save_every=1)
    train.train(straight)
    total = log(straight)[-1]["skipped_by_reason"]
    assert total == {"image_corrupt": 4}  # 2 files x 2 epochs
    assert "samples skipped during training (an image failed to decode): image_corrupt 4" in capsys.readouterr().out
    part = config(setup, "skips_resumed", data=data_path, epochs=2, save_every=1, stop_after=2)
    train.train(part)
    train.train(dataclasses.replace(part, stop_after=0, resume=True))
    assert log(part)[-1]["skipped_by_reason"] == total and log(part)[-1]["skipped"] == 4


def test_samples_whose_image_fails_to_decode_add_nothing_to_the_update(setup, tmp_path):
    """A first step that holds samples with unreadable image files: its supervised tokens, loss and
    pre-clip gradient norm are transformers' over the step's readable samples alone."""
    data_path = _data_with_broken_images(setup, tmp_path, 2)
    cfg = config(setup, "skips_step", data=data_path, stop_after=1)
    train.train(cfg)
    samples = first_step_samples(data_path, setup)
    readable = [s for s in samples if not data.is_skipped(s)]
    assert len(readable) < len(samples)  # one of the broken records falls in the first step
    loss, norm, n_sup = transformers_step(setup["model"], readable)
    first = log(cfg)[0]
    assert first["sup_tokens"] == n_sup
    assert first["skipped_by_reason"] == {"image_corrupt": len(samples) - len(readable)}
    assert abs(first["loss"] - loss) <= 5e-7  # measured 1.4e-7
    assert abs(first["grad_norm"] - norm) <= 5e-7  # measured 1.3e-7


def test_training_data_whose_every_image_fails_to_decode_is_a_clear_error(setup, tmp_path):
    data_path = _data_with_broken_images(setup, tmp_path, 100)
    text_only = [json.loads(line) for line in open(data_path)]
    with open(data_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in text_only if r["images"])
    with pytest.raises(RuntimeError, match="no sample of the .* training records can be encoded"):
        train.train(config(setup, "all_broken", data=data_path))


def test_bf16_autocast_runs_the_gpu_code_path_on_a_cpu(setup):
    """--amp bf16 on a CPU goes through the same autocast, non-blocking copies and loss as on a
    GPU; its first loss is the fp32 one up to bf16 rounding (measured here: 4.1e-6 relative), and
    not bit for bit the same (the autocast did engage)."""
    fp32 = config(setup, "amp_fp32", stop_after=1)
    bf16 = config(setup, "amp_bf16", stop_after=1, amp="bf16")
    train.train(fp32)
    train.train(bf16)
    a, b = log(fp32)[0], log(bf16)[0]
    assert a["sup_tokens"] == b["sup_tokens"] and math.isfinite(b["loss"])
    assert abs(a["loss"] - b["loss"]) / a["loss"] <= 1e-5 and a["loss"] != b["loss"]


@pytest.mark.slow  # a bench/gpu_check.py subprocess
def test_the_gpu_check_script_runs_on_a_cpu():
    """bench/gpu_check.py is for whoever has a GPU; on a CPU it runs the same code (parity in fp32
    and bf16 against transformers, torchrun training with bf16 autocast) so it carries no typo."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--device", "cpu",
                           "--steps", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("parity", "training"))]
    assert [line.split(":")[0] for line in lines] == ["parity float32", "parity bfloat16", "training"]
    assert all(line.split(")")[-1].strip().startswith("ok") or " ok;" in line for line in lines), lines
