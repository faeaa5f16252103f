"""train.py on CPU with a tiny Qwen2.5-VL: schedule, batch plan, exact loss normalization under
DDP (2 gloo processes via torchrun) and FSDP2, exact resume, transformers-loadable checkpoints.

    python -m pytest -q tests/test_train.py
"""
import dataclasses
import json
import math
import os
import subprocess
import sys

import click
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import data
import synthetic
import train
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


def torchrun(cfg, nproc=2):
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
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def final_weights(cfg):
    ckpt = train.list_checkpoints(cfg.out)[-1]
    return load_file(os.path.join(ckpt, "model.safetensors"))


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def log(cfg):
    with open(os.path.join(cfg.out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


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
    assert abs(float(got) - float(want)) < 1e-4
    assert train.supervised_count({"labels": labels, "attention_mask": mask}) == 6 + 5  # row 0: the target across the 1|2 boundary is excluded


# ------------------------------------------------------------------------------- distributed
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
    assert max_diff(final_weights(one), final_weights(ddp)) <= 1e-5
    a, b = log(one), log(ddp)
    assert [r["sup_tokens"] for r in a] == [r["sup_tokens"] for r in b]
    assert all(abs(x["loss"] - y["loss"]) < 1e-5 for x, y in zip(a, b))


def test_text_only_batches_do_not_crash_ddp_and_leave_vision_untouched(setup):
    cfg = config(setup, "text", data=setup["text"], global_batch=4, micro_batch=1, weight_decay=0.0)
    torchrun(cfg)
    before = load_file(os.path.join(setup["model"], "model.safetensors"))
    after = final_weights(cfg)
    vision = [k for k in before if k.startswith("visual.")]
    assert max(float((before[k] - after[k]).abs().max()) for k in vision) == 0.0  # exactly zero grads
    assert float((before["model.norm.weight"] - after["model.norm.weight"]).abs().max()) > 0


def test_fsdp_two_processes_equals_one_process(setup, reference):
    one, _ = reference
    cfg = config(setup, "fsdp", global_batch=8, micro_batch=2, epochs=2, fsdp=True)
    torchrun(cfg)
    assert max_diff(final_weights(one), final_weights(cfg)) <= 1e-5


# ------------------------------------------------------------------------------- options
def test_packing_gives_the_same_update_as_padding(setup, reference):
    """The loss is a per-token mean over the step, so packing samples into shared rows changes
    the batch layout but not the gradient."""
    one, _ = reference
    cfg = dataclasses.replace(one, out=os.path.join(setup["root"], "packed"), packing=True, max_len=1024)
    train.train(cfg)
    assert [r["tokens"] for r in log(cfg)] == [r["tokens"] for r in log(one)]
    assert [r["padding"] for r in log(cfg)] == [0.0] * 4 and log(one)[0]["padding"] > 0.1  # one row per step
    assert max_diff(final_weights(one), final_weights(cfg)) <= 1e-5


def test_activation_checkpointing_gives_the_same_update(setup, reference):
    one, _ = reference
    cfg = dataclasses.replace(one, out=os.path.join(setup["root"], "ckpt"), grad_ckpt=True)
    train.train(cfg)
    assert max_diff(final_weights(one), final_weights(cfg)) <= 1e-6


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
    assert [os.path.basename(p) for p in train.list_checkpoints(part.out)] == ["step-000001"]
    train.train(dataclasses.replace(part, stop_after=0, resume=True))
    a, b = log(straight), log(part)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    # same data and same state after the resume: identical per-step losses and token counts
    assert [(r["loss"], r["sup_tokens"], r["tokens"]) for r in a] == [(r["loss"], r["sup_tokens"], r["tokens"]) for r in b]
    assert max_diff(final_weights(straight), final_weights(part)) == 0.0


def test_resume_on_another_number_of_processes(setup, reference):
    """A step holds the same samples whatever the world size and the resume state is resharded,
    so 1 step on 2 DDP ranks, then 3 steps resumed in one process, equal 4 steps in one process."""
    straight, _ = reference
    two = config(setup, "reshard", global_batch=8, micro_batch=2, epochs=2, stop_after=1)
    torchrun(two)
    train.train(dataclasses.replace(two, micro_batch=8, stop_after=0, resume=True))
    assert [r["step"] for r in log(two)] == [1, 2, 3, 4]
    assert max_diff(final_weights(straight), final_weights(two)) <= 1e-5


def test_checkpoint_loads_in_transformers_with_same_logits(setup, reference):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    cfg, model = reference
    ckpt = train.list_checkpoints(cfg.out)[-1]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "preprocessor_config.json"):
        assert os.path.exists(os.path.join(ckpt, name)), name
    assert json.load(open(os.path.join(ckpt, "preprocessor_config.json")))["max_pixels"] == 12544
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.chat_template == synthetic.QWEN2_5_VL_CHAT_TEMPLATE
    hf, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    proc = data.ImageProcessor(min_pixels=3136, max_pixels=12544)
    ds = data.SFTDataset(setup["mixed"], tok, proc, 256)
    batch = data.collate([ds[0], ds[1], ds[2]], tok.pad_token_id)
    hf.eval(), model.eval()
    mm = (batch["input_ids"] == model.config.image_token_id).long()
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"], batch["attention_mask"])
        theirs = hf(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                    attention_mask=batch["attention_mask"], mm_token_type_ids=mm).logits
    keep = batch["attention_mask"].bool()
    assert float((ours[keep] - theirs[keep]).abs().max()) <= 1e-4


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
    assert [os.path.basename(p) for p in train.list_checkpoints(cfg.out)] == ["step-000001"]
    assert os.path.isdir(os.path.join(cfg.out, ".tmp-step-000002"))  # the half-written one, never listed
    with pytest.raises(click.UsageError, match="pass --resume"):  # never silently overwrite a run
        train.train(cfg)
    train.train(dataclasses.replace(cfg, resume=True))
    assert not os.path.exists(os.path.join(cfg.out, ".tmp-step-000002"))
    assert [r["step"] for r in log(cfg)] == [1, 2, 3, 4]
    assert max_diff(final_weights(straight), final_weights(cfg)) == 0.0
    assert len(train.list_checkpoints(cfg.out)) == cfg.keep  # older ones pruned


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
    assert not train.list_checkpoints(os.path.join(setup["root"], "nan"))


# -------------------------------------------------------------------------------- learning
def test_training_drives_loss_down(setup):
    cfg = config(setup, "learn", global_batch=8, micro_batch=8, epochs=15, lr=1e-2, warmup_ratio=0.1)
    train.train(cfg)
    losses = [r["loss"] for r in log(cfg)]
    assert sum(losses[-2:]) / 2 < 0.4 * losses[0], losses


# ------------------------------------------------------------------------------- helpers
def train_lengths(setup):
    return make_dataset(setup).lengths


def make_dataset(setup):
    tok = data.load_tokenizer(setup["model"])
    return data.SFTDataset(setup["mixed"], tok, data.ImageProcessor(min_pixels=3136, max_pixels=12544), 256)


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
    assert [os.path.basename(p) for p in train.list_checkpoints(out)] == ["step-000001", "step-000002"]
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
    assert [os.path.basename(p) for p in train.list_checkpoints(cfg.out)] == ["step-000001", "step-000002",
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
    assert train.list_checkpoints(cfg.out) == [] and not os.path.exists(os.path.join(cfg.out, "step-000001"))


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


def test_training_data_whose_every_image_fails_to_decode_is_a_clear_error(setup, tmp_path):
    data_path = _data_with_broken_images(setup, tmp_path, 100)
    text_only = [json.loads(line) for line in open(data_path)]
    with open(data_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in text_only if r["images"])
    with pytest.raises(RuntimeError, match="no sample of the .* training records can be encoded"):
        train.train(config(setup, "all_broken", data=data_path))


def test_bf16_autocast_runs_the_gpu_code_path_on_a_cpu(setup):
    """--amp bf16 on a CPU goes through the same autocast, non-blocking copies and loss as on a
    GPU; its first loss is the fp32 one up to bf16 rounding (measured here: 4e-6 relative), and
    not bit for bit the same (the autocast did engage)."""
    fp32 = config(setup, "amp_fp32", stop_after=1)
    bf16 = config(setup, "amp_bf16", stop_after=1, amp="bf16")
    train.train(fp32)
    train.train(bf16)
    a, b = log(fp32)[0], log(bf16)[0]
    assert a["sup_tokens"] == b["sup_tokens"] and math.isfinite(b["loss"])
    assert abs(a["loss"] - b["loss"]) / a["loss"] < 1e-4 and a["loss"] != b["loss"]


def test_the_gpu_check_script_runs_on_a_cpu():
    """bench/gpu_check.py is for whoever has a GPU; on a CPU it runs the same code (parity in fp32
    and bf16 against transformers, torchrun training with bf16 autocast) so it carries no typo."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--device", "cpu",
                           "--steps", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("parity", "training"))]
    assert [line.split(":")[0] for line in lines] == ["parity float32", "parity bfloat16", "training"]
    assert all(line.split(")")[-1].strip().startswith("ok") or " ok;" in line for line in lines), lines
