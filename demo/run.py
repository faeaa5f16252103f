"""The whole Infi-Med pipeline end to end, on a CPU: synthetic medical VQA -> tokenizer and a
tiny Qwen2.5-VL-shaped model -> vision pretraining -> curation -> supervised fine-tuning with
torchrun (2 processes, gloo) -> evaluation of the base and the trained model -> a report.
From the repository root:

    python -m demo.run              # the full demo (10-15 minutes on 2 CPU cores)
    python -m demo.run --quick      # a shortened run, the one tests/test_demo.py checks
    make demo                       # the first line, inside the project's virtual environment

A driver: each stage prints why it runs and the command it runs, and the project's commands do
the work (python -m demo.synthetic, curate.py, decontaminate.py, torchrun train.py, evaluate.py
run and compare). Done here is only what no command does: the tiny model, the vision
pretraining, the raw mix with planted benchmark leaks, the option checks that stand in for a
teacher, the captions of the test scans, and report.md (demo/report.py): `evaluate.py
compare`, tables read from each evaluation's summary.json, and the sections only the demo has. Everything lands in demo_out/
(or --out): synth/, base/ (the starting checkpoint), curate/, run/ (training), eval/, report.md,
results.json, loss.png, accuracy.png, timings.json. A finished stage is not redone when the demo
runs again with the same settings (--fresh starts over).

Why the model can learn at all: it starts from random weights, so the data is made easy to see
(112-pixel scans, 16 image tokens, large high-contrast lesions; demo/synthetic.py) and the
learning rate is high (2e-3). A real Qwen2.5-VL has a pretrained vision tower; the stand-in here
is a short pretraining of the tower on the training captions (synthetic.pretrain_vision), without
which it learned shape and side only at chance. What such a model does not learn in minutes is
to map the answer it sees onto an option letter in one step, so curation writes each
multiple-choice answer as the answer, then a short check of the options (`option_check`), the
stand-in for the paper's teacher-written chains of thought (--bare-letters trains the bare
letters instead). docs/notes.md keeps the runs behind these choices; a real run starts from
Qwen2.5-VL-3B-Instruct (README.md).
"""
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace

import click
import torch
from PIL import Image

import checkpoint
import curate
import data
import evaluate
import prompts
import sources
from demo import synthetic
from demo.report import stage_report
from image_processor import ImageProcessor
from infimed import QwenVL, QwenVLConfig, VisionConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # every command runs from here


# ----------------------------------------------------------------------------------- config
@dataclass
class DemoConfig:
    out: str = "demo_out"
    seed: int = 0
    # 1. data (demo/synthetic.py)
    n_train: int = 9000  # training questions (3 per image)
    n_test: int = 500  # benchmark questions
    image_size: int = 112  # 8 x 8 patches of 14 px -> 16 image tokens after the 2 x 2 merge
    # 2. model: a Qwen2.5-VL-shaped model about 1.3M parameters strong
    vocab_size: int = 512  # BPE merges learned on the demo text; the 14 Qwen special tokens follow
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2  # grouped-query attention, as Qwen2.5-VL
    intermediate_size: int = 384
    vision_depth: int = 2
    vision_width: int = 128
    vision_heads: int = 4
    # 2b. vision pretraining, the stand-in for Qwen2.5-VL's pretrained vision tower
    vision_steps: int = 800  # enough for the probe to read side and shape off the benchmark scans (docs/notes.md)
    vision_lr: float = 1e-3
    vision_batch: int = 32
    # 3. curation (curate.py, decontaminate.py)
    n_planted: int = 3  # benchmark items copied into the training data, per kind (exact, reworded)
    caption_keep_percentile: float = 95.0  # perplexity filter on the captions
    decontam_threshold: float = 0.95  # the paper's similarity threshold (section 3)
    option_check: bool = True  # multiple-choice answers as a check of the options (option_check)
    # 4. training (train.py)
    nproc: int = 2
    epochs: int = 6  # docs/notes.md lists the runs with 5, 6 and 7 epochs
    global_batch: int = 16
    lr: float = 2e-3  # the language model (and the default for every part)
    lr_vision: float = 2e-4  # vision tower and merger: low, so SFT refines the pretrained features (2e-3 wiped them)
    warmup_ratio: float = 0.05
    # 5. evaluation (evaluate.py)
    eval_batch: int = 32
    # the longest option check (4 count options, the last one right: "3\nA. 2: no\n...D. 3: yes\n
    # <answer>D</answer>") is 42 tokens with the demo's tokenizer, then <|im_end|>
    max_new_tokens: int = 48


QUICK = dict(n_train=240, n_test=60, n_planted=2, epochs=2, global_batch=16, vision_steps=40)


# ----------------------------------------------------------------------------- stage helpers
class Clock:
    """Wall time and CPU time of this process and its finished children (torchrun, CLIs)."""

    def __init__(self):
        self.t0, self.c0 = time.time(), self.cpu()

    @staticmethod
    def cpu():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def lap(self):
        return {"wall_s": round(time.time() - self.t0, 1), "cpu_s": round(self.cpu() - self.c0, 1)}


def say(title, why):
    print(f"\n{'=' * 100}\n{title}\n" + textwrap.fill(" ".join(why.split()), 100) + "\n", flush=True)


def sh(cmd, shown=None, **kw):
    """Run a command from the repository root, echoing it as typed by hand (`python` for this
    interpreter; `shown` when the real argv differs, e.g. `torchrun` for `python -m torch.distributed.run`)."""
    print("$ " + (shown or " ".join("python" if c == sys.executable else shlex.quote(str(c)) for c in cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def done(path, settings):
    """True when `path` (a stage's marker file) records exactly these settings."""
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f) == settings


def mark(path, settings):
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(rows, path):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ------------------------------------------------------------------------------ 1. data
def stage_data(cfg, paths):
    settings = {k: getattr(cfg, k) for k in ("seed", "n_train", "n_test", "image_size")}
    if done(paths["synth_done"], settings):
        print("(already generated)")
        return
    sh([sys.executable, "-m", "demo.synthetic", "-o", paths["synth"], "--n-train", cfg.n_train,
        "--n-test", cfg.n_test, "--seed", cfg.seed, "--image-size", cfg.image_size])
    mark(paths["synth_done"], settings)


# ----------------------------------------------------------------------------- 2. model
def tiny_config(cfg, tok):
    """A Qwen2.5-VL-shaped config at demo size; token ids are read from the tokenizer."""
    ids = tok.convert_tokens_to_ids
    head_dim = cfg.hidden_size // cfg.num_heads
    pairs = head_dim // 2  # rotary pairs split over (t, h, w) in the ratio of Qwen's [16, 24, 24]
    section = [pairs // 4, pairs * 3 // 8, pairs - pairs // 4 - pairs * 3 // 8]
    vision = VisionConfig(depth=cfg.vision_depth, hidden_size=cfg.vision_width, out_hidden_size=cfg.hidden_size,
                          intermediate_size=2 * cfg.vision_width, num_heads=cfg.vision_heads,
                          # one 112-pixel window = the whole image; the last block is global, as
                          # blocks 7, 15, 23, 31 are in the 3B model
                          window_size=cfg.image_size, fullatt_block_indexes=[cfg.vision_depth - 1])
    return QwenVLConfig(vocab_size=-(-len(tok) // 64) * 64,  # padded to a multiple of 64, as Qwen's
                        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                        num_key_value_heads=cfg.num_kv_heads, rope_theta=10000.0, mrope_section=section,
                        max_position_embeddings=4096, image_token_id=ids("<|image_pad|>"),
                        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                        vision_end_token_id=ids("<|vision_end|>"), bos_token_id=ids("<|endoftext|>"),
                        eos_token_id=ids("<|im_end|>"), vision=vision)


def stage_model(cfg, paths):
    settings = {k: getattr(cfg, k) for k in ("seed", "n_train", "vocab_size", "hidden_size", "num_layers", "num_heads",
                                             "num_kv_heads", "intermediate_size", "vision_depth", "vision_width",
                                             "vision_heads", "image_size")}
    if done(paths["base_done"], settings):
        print("(already built)")
        return
    shutil.rmtree(paths["base"], ignore_errors=True)
    # the tokenizer learns its merges from the training text only (never from the benchmark)
    records, _ = data.read_sharegpt(os.path.join(paths["synth"], "train.jsonl"))
    texts = [data.render_chat(r["messages"]) for r in records]
    texts += [c["caption"] for c in read_jsonl(os.path.join(paths["synth"], "captions.jsonl")) if c["split"] == "train"]
    tok = synthetic.build_tokenizer(texts, paths["base"], vocab_size=cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model = QwenVL(tiny_config(cfg, tok))
    model.save_pretrained(paths["base"])
    # the pixel budget of a 112 x 112 scan: exactly one size, 8 x 8 patches
    ImageProcessor(min_pixels=cfg.image_size ** 2, max_pixels=cfg.image_size ** 2).save_pretrained(paths["base"])
    n = sum(p.numel() for p in model.parameters())
    nv = sum(p.numel() for k, p in model.named_parameters() if k.startswith("visual."))
    print(f"tokenizer: {len(tok)} tokens; model: {n:,} parameters ({nv:,} in the vision tower); "
          f"wrote {paths['base']}/")
    mark(paths["base_done"], settings)


# ------------------------------------------------------------------ 2b. vision pretraining
def caption_set(paths, split, image_processor):
    """(pixel_values, grid_thw, labels) of the synthetic captions of one split."""
    caps = [c for c in read_jsonl(os.path.join(paths["synth"], "captions.jsonl")) if c["split"] == split]
    x, grids = zip(*(image_processor([os.path.join(paths["synth"], c["image"])]) for c in caps))
    if any(not torch.equal(g, grids[0]) for g in grids):
        raise ValueError("vision pretraining stacks images of one size; the captioned scans differ in size")
    rows = [synthetic.caption_labels(c["caption"]) for c in caps]
    return torch.stack(x), grids[0], {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def stage_vision(cfg, paths):
    settings = {"vision_steps": cfg.vision_steps, "vision_lr": cfg.vision_lr, "vision_batch": cfg.vision_batch,
                "seed": cfg.seed, "base_built": os.path.getmtime(paths["base_done"])}
    if done(paths["vision_done"], settings):
        print("(already pretrained)")
        return
    # from the same random init as stage_model (same config and seed), never from an earlier
    # pretraining: a rerun with other settings gives what a fresh run gives
    torch.manual_seed(cfg.seed)
    model = QwenVL(QwenVLConfig.from_pretrained(paths["base"]))
    ip = ImageProcessor.from_pretrained(paths["base"])
    x, grid, labels = caption_set(paths, "train", ip)  # training scans only: the benchmark's never
    predict = synthetic.pretrain_vision(model, x, grid, labels, cfg.vision_steps, cfg.vision_lr, cfg.vision_batch,
                                        cfg.seed)
    x, grid, labels = caption_set(paths, "test", ip)
    with torch.no_grad():
        out = predict(x)
    probe = {k: round(float((out[k].argmax(-1) == y)[y >= 0].float().mean()), 3) for k, y in labels.items()
             if (y >= 0).any()}
    print(f"linear-probe accuracy on the benchmark scans: {probe}")
    with open(paths["vision_probe"], "w") as f:
        json.dump(probe, f, indent=2)
    model.save_pretrained(paths["base"])
    mark(paths["vision_done"], settings)


# ---------------------------------------------------------------------------- 3. curation
def planted_items(cfg, paths):
    """Benchmark items copied into the training data, as leaks happen in practice: `exact`
    copies (same image file, same question) and `reworded` ones (the image saved again under
    another name, the question in other case and punctuation). Both must be removed."""
    test = read_jsonl(os.path.join(paths["synth"], "test.jsonl"))
    rng = random.Random(cfg.seed)
    picks = rng.sample(test, 2 * cfg.n_planted)
    os.makedirs(os.path.join(paths["synth"], "planted"), exist_ok=True)
    out = []
    for k, r in enumerate(picks):
        kind = "exact" if k < cfg.n_planted else "reworded"
        rec = {**r, "images": list(r["images"])}
        if kind == "reworded":
            name = f"planted/leak_{k:03d}.png"
            Image.open(os.path.join(paths["synth"], r["images"][0])).save(os.path.join(paths["synth"], name))
            rec["images"] = [name]
            rec["question"] = r["question"].upper().replace("?", " ?")
        sample = sources.to_sharegpt(rec, augment=True, seed=cfg.seed)
        out.append({"id": f"planted-{kind}-{r['id']}", "source": "planted", **sample})
    return out


def option_check(options, gold):
    """The demo's stand-in for a teacher's chain of thought: the answer first, then the options
    checked in order, each 'yes' or 'no', up to the right one, then its letter in the paper's
    answer tags:
        "MRI\nA. CT: no\nB. MRI: yes\n<answer>B</answer>"
    Why not the bare letter: from scratch, in minutes, a 2-layer model does not learn to map the
    answer it sees onto a letter (find the option that names it, then copy the letter before it);
    with bare letters it stays near chance. Each step here is simpler: say what the scan shows
    (the open question, the model's best skill), copy the next option after its letter (plain
    induction), judge it (yes or no), repeat the letter of the line that said yes. The first line
    helps the judgement without deciding it. docs/notes.md has the runs behind both claims."""
    lines = [options[gold]]
    for letter, text in options.items():
        lines.append(f"{letter}. {text}: {'yes' if letter == gold else 'no'}")
        if letter == gold:
            break
    return "\n".join(lines + [f"<answer>{gold}</answer>"])


def enhance_choice_answers(records):
    """Multiple-choice records (a letter answer to lettered options) get `option_check` as their
    answer; the rest are kept as they are. Returns (records, counts)."""
    out, counts = [], defaultdict(int)
    for r in records:
        u, a = curate.turn_index(r, "user"), curate.turn_index(r, "assistant", last=True)
        _, options = curate.parse_options(r["messages"][u]["content"]) if u is not None else ("", None)
        gold = prompts.parse_gold(r["messages"][a]["content"], options) if options and a is not None else None
        if gold is None:
            counts["kept:not_multiple_choice"] += 1
            out.append(r)
            continue
        text = option_check(options, gold)
        ok, why = curate.accept_rationale(text, options, gold)
        if not ok:  # cannot happen for option_check's output; counted, never silent
            counts[f"kept:rejected:{why}"] += 1
            out.append(r)
            continue
        counts["enhanced"] += 1
        messages = [dict(m) for m in r["messages"]]
        messages[a]["content"] = text
        out.append({**r, "messages": messages})
    return out, dict(counts)


def stage_curate(cfg, paths):
    settings = {k: getattr(cfg, k) for k in ("seed", "n_train", "n_test", "n_planted", "caption_keep_percentile",
                                             "decontam_threshold", "vocab_size", "option_check")}
    if done(paths["curate_done"], settings):
        print("(already curated)")
        return
    d = paths["curate"]
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    synth = paths["synth"]
    py = sys.executable
    # a) the raw mix: questions, one caption per training image, planted benchmark leaks
    questions = [{**r, "source": "synthetic_vqa"} for r in read_jsonl(os.path.join(synth, "train.jsonl"))]
    captions = [{"id": f"caption-{os.path.basename(c['image'])}", "source": "synthetic_caption",
                 "messages": [{"role": "user", "content": "<image>Describe this medical image."},
                              {"role": "assistant", "content": c["caption"]}], "images": [c["image"]]}
                for c in read_jsonl(os.path.join(synth, "captions.jsonl")) if c["split"] == "train"]
    planted = planted_items(cfg, paths)
    # files live next to the images so that relative image paths resolve
    write_jsonl(questions + planted, os.path.join(synth, "mix_vqa.jsonl"))
    write_jsonl(captions, os.path.join(synth, "mix_captions.jsonl"))
    print(f"raw mix: {len(questions)} questions, {len(captions)} captions, {len(planted)} planted benchmark items")
    # b) instruction augmentation of the questions (paper section 3.1)
    sh([py, "curate.py", "augment", os.path.join(synth, "mix_vqa.jsonl"), os.path.join(d, "vqa_augmented.jsonl"),
        "--seed", cfg.seed])
    # c) response enhancement (paper section 3.1): the multiple-choice answers become a short
    # check of the options, written from the known answer and kept only if it passes the
    # rejection test a teacher's chain of thought must pass (curate.accept_rationale)
    enhanced = read_jsonl(os.path.join(d, "vqa_augmented.jsonl"))
    counts = {"kept:bare_letters": len(enhanced)}
    if cfg.option_check:
        enhanced, counts = enhance_choice_answers(enhanced)
    write_jsonl(enhanced, os.path.join(d, "vqa_enhanced.jsonl"))
    print(f"response enhancement (option_check): {counts}")
    # d) perplexity filter on the captions (paper section 3.1): keep the lowest 95% per source.
    # The scorer here is the base model, whose language model is untrained, so which 5% go is
    # arbitrary: the demo shows the mechanics; a real run scores with Qwen2.5-VL-3B-Instruct.
    sh([py, "curate.py", "perplexity", os.path.join(synth, "mix_captions.jsonl"),
        os.path.join(d, "captions_filtered.jsonl"), "--model", paths["base"],
        "--keep-percentile", cfg.caption_keep_percentile, "--batch-size", 32])
    merged = enhanced + read_jsonl(os.path.join(d, "captions_filtered.jsonl"))
    write_jsonl(merged, os.path.join(d, "mix_curated.jsonl"))
    # e) decontamination against the benchmark: exact pass + embedding pass (paper section 3)
    sh([py, "decontaminate.py", os.path.join(d, "mix_curated.jsonl"), os.path.join(d, "decontaminated.jsonl"),
        "--bench", os.path.join(synth, "test.jsonl"), "--embedder", "hash", "--threshold", cfg.decontam_threshold])
    with open(os.path.join(d, "decontaminated.report.json")) as f:
        removed = json.load(f)["removed"]
    exact_ids = {r["train"] for r in removed if r["kind"] == "exact"}
    by_embedding = [r for r in removed if r["kind"] == "embedding"]
    # the embedding pass needs a multimodal embedder (the paper: gme-Qwen2-VL); the offline hash
    # embedder's matches here are look-alikes, not leaks (report.md says why): reported, kept
    train = [r for r in merged if r["id"] not in exact_ids]
    write_jsonl(train, os.path.join(d, "train.jsonl"))
    summary = {"raw": {"questions": len(questions), "captions": len(captions), "planted": len(planted)},
               "augmented": len(enhanced), "enhanced": counts,
               "captions_kept": len(read_jsonl(os.path.join(d, "captions_filtered.jsonl"))),
               "removed_exact": sorted(exact_ids), "embedding_matches": len(by_embedding),
               "embedding_matches_planted": sorted(r["train"] for r in by_embedding
                                                   if r["train"].startswith("planted")),
               "planted": [p["id"] for p in planted],
               "planted_removed": sorted(p["id"] for p in planted if p["id"] in exact_ids),
               "train": len(train)}
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"removed {len(exact_ids)} exact benchmark copies ({len(summary['planted_removed'])} of "
          f"{len(planted)} planted); the embedding pass at {cfg.decontam_threshold} matched {len(by_embedding)} "
          f"more records ({100 * len(by_embedding) / max(1, len(merged)):.0f}% of the mix; reported, "
          f"kept: see report.md); {len(train)} training records")
    mark(paths["curate_done"], settings)


# ------------------------------------------------------------------------------- 4. training
def stage_train(cfg, paths):
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "eval_batch", "max_new_tokens")}
    if done(paths["run_done"], settings):
        print("(already trained)")
        return
    shutil.rmtree(paths["run"], ignore_errors=True)
    args = [str(a) for a in [
        "train.py", "--model", paths["base"], "--data", os.path.join(paths["curate"], "train.jsonl"),
        "--out", paths["run"], "--epochs", cfg.epochs, "--global-batch", cfg.global_batch,
        "--micro-batch", cfg.global_batch // cfg.nproc, "--lr", cfg.lr, "--lr-vision", cfg.lr_vision,
        "--lr-merger", cfg.lr_vision, "--warmup-ratio", cfg.warmup_ratio, "--max-len", 512,
        "--min-pixels", cfg.image_size ** 2, "--max-pixels", cfg.image_size ** 2, "--workers", 0,
        "--save-every", 100000, "--seed", cfg.seed]]
    # --standalone picks a free rendezvous port, so two demos (or tests) can run side by side
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: 2 processes on 2 cores
    sh([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", cfg.nproc] + args,
       shown=f"torchrun --standalone --nproc_per_node {cfg.nproc} " + " ".join(shlex.quote(a) for a in args), env=env)
    if not checkpoint.list_checkpoints(paths["run"]):
        raise RuntimeError(f"training wrote no checkpoint into {paths['run']}")
    mark(paths["run_done"], settings)


# ---------------------------------------------------------------------------- 5. evaluation
def model_settings(cfg, model_dir):
    """What an evaluation of a checkpoint depends on: redone when the checkpoint is rewritten."""
    return {"model": os.path.abspath(model_dir), "n_test": cfg.n_test, "seed": cfg.seed,
            "trained": os.path.getmtime(os.path.join(model_dir, "config.json"))}


def stage_eval(cfg, paths, name, model_dir, label):
    out = os.path.join(paths["eval"], name)
    settings = dict(model_settings(cfg, model_dir), max_new_tokens=cfg.max_new_tokens)
    if done(out + ".done", settings):
        print("(already evaluated)")
        return out
    shutil.rmtree(out, ignore_errors=True)
    # --shuffle: the multiple-choice questions again with their options in another order
    sh([sys.executable, "evaluate.py", "run", "--model", model_dir, "--benchmark", "synthetic",
        "--data-root", paths["synth"], "--out", out, "--name", label, "--shuffle",
        "--max-new-tokens", cfg.max_new_tokens, "--batch-size", cfg.eval_batch, "--device", "cpu",
        "--seed", cfg.seed])
    mark(out + ".done", settings)
    return out


def stage_captions(cfg, paths, name, model_dir):
    """Captions of the benchmark's single-lesion scans, checked word by word against the metadata.
    The questions about a lesion are few (about 100 of 500); a caption names all four attributes,
    so this shows what the vision tower has learned to see even where the answers lag."""
    out = os.path.join(paths["eval"], name, "captions.jsonl")
    settings = model_settings(cfg, model_dir)
    if done(out + ".done", settings):
        print("(already captioned)")
        return out
    scans = {}
    for r in read_jsonl(os.path.join(paths["synth"], "test.jsonl")):
        if len(r["meta"]["lesions"]) == 1:
            scans.setdefault(r["images"][0], r["meta"]["lesions"][0])
    backend = evaluate.make_backend("native", model_dir, batch_size=cfg.eval_batch, device="cpu")
    requests = [{"messages": [{"role": "user", "content": "<image>Describe this medical image."}],
                 "images": [os.path.join(paths["synth"], image)]} for image in scans]
    texts = backend.generate(requests, max_new_tokens=32)
    rows = []
    for (image, lesion), (text,) in zip(scans.items(), texts):
        said = synthetic.caption_attributes(text)
        rows.append({"image": image, "caption": text, "named": said,
                     "correct": {a: said[a] == lesion[a] for a in said}})
    write_jsonl(rows, out)
    print(f"{name}: captioned {len(rows)} single-lesion test scans")
    mark(out + ".done", settings)
    return out


# ------------------------------------------------------------------------------------ main
def demo_paths(out):
    """Every stage's output folder or file under `out`, and its done-marker."""
    names = {"synth": "synth", "base": "base", "curate": "curate", "run": "run", "eval": "eval",
             "vision_probe": "vision_probe.json"}
    names.update({f"{stage}_done": f"{stage}.done" for stage in ("synth", "base", "vision", "curate", "run")})
    return {"out": out, **{k: os.path.join(out, v) for k, v in names.items()}}


def demo(cfg):
    paths = demo_paths(cfg.out)
    os.makedirs(paths["eval"], exist_ok=True)
    timings, total = {}, Clock()

    def timed(name, fn, *a):
        c = Clock()
        r = fn(*a)
        timings[name] = c.lap()
        print(f"[{name}: {timings[name]['wall_s']} s wall, {timings[name]['cpu_s']} s CPU]")
        return r

    say("1. Synthetic data (demo/synthetic.py)",
        f"{cfg.n_train} training and {cfg.n_test} benchmark questions about generated scans (CT, MRI, X-ray, "
        "ultrasound) with 0-3 lesions: modality, lesion presence, shape, brightness, size, count and side, as "
        "multiple choice, yes/no or open questions; plus one caption per image. Test images never appear in training.")
    timed("data", stage_data, cfg, paths)

    say("2. Tokenizer and a tiny Qwen2.5-VL (synthetic.build_tokenizer, infimed.QwenVL)",
        "A byte-level BPE learned on the training text, with the real Qwen special tokens and chat template, and "
        "a randomly initialised model with the real architecture (vision tower with 2D rotary, 2x2 patch merger, "
        "decoder with M-RoPE and grouped-query attention) at a size a CPU trains in minutes. Saved as a Hub-style "
        "checkpoint directory: the 'base' model.")
    timed("model", stage_model, cfg, paths)

    say("2b. Vision pretraining (synthetic.pretrain_vision)",
        "Qwen2.5-VL starts from a pretrained vision tower; this one is random, and trained only through the "
        "language model it learns whole-image cues but names a lesion's side and shape at about chance. So first "
        "the tower and merger learn to state what each training caption says through throw-away linear heads, "
        f"{cfg.vision_steps} steps; SFT then refines the tower at a low learning rate.")
    timed("vision", stage_vision, cfg, paths)

    say("3. Curation (curate.py, decontaminate.py)",
        "Instruction augmentation re-renders each question with an answer-format instruction; response "
        "enhancement turns each multiple-choice answer into a short check of the options ending in "
        "<answer>X</answer> (the stand-in for a teacher's chain of thought, checked by the same rejection test); "
        "a perplexity filter drops the captions the scorer finds least likely; decontamination removes training "
        f"records that match a benchmark item. {2 * cfg.n_planted} benchmark questions were planted in the "
        "training data on purpose: the report shows them removed.")
    timed("curate", stage_curate, cfg, paths)

    say("4. Supervised fine-tuning (torchrun --nproc_per_node 2 train.py)",
        "Full-parameter SFT with the paper's recipe shape (AdamW, warmup then cosine, loss on the answers only), "
        "as 2 processes with DistributedDataParallel over gloo, one CPU core each. The loss is logged per step.")
    timed("train", stage_train, cfg, paths)
    final = checkpoint.list_checkpoints(paths["run"])[-1]

    say("5. Evaluation (evaluate.py run --shuffle)",
        "Greedy answers of the base model (its language model untrained) and the trained one, scored like the "
        "paper, then again with the options shuffled (robustness); then both models caption the single-lesion "
        "scans, to show which lesion attributes the vision tower has learned.")
    evals = {"base": timed("eval base", stage_eval, cfg, paths, "base", paths["base"], "base"),
             "trained": timed("eval trained", stage_eval, cfg, paths, "trained", final, "trained")}
    captions = {"base": timed("captions base", stage_captions, cfg, paths, "base", paths["base"]),
                "trained": timed("captions trained", stage_captions, cfg, paths, "trained", final)}

    say("6. Report (evaluate.py compare)",
        "The Table 1-shaped comparison of the two evaluation runs, accuracy per skill and question form from "
        "their summary.json, what the captions name, and two plots.")
    timings["total"] = total.lap()
    accuracy = timed("report", stage_report, cfg, paths, evals, captions, timings)
    timings["total"] = total.lap()
    with open(os.path.join(cfg.out, "timings.json"), "w") as f:
        json.dump(timings, f, indent=2)
    print(open(os.path.join(cfg.out, "report.md")).read())
    print(f"overall accuracy: base {accuracy['base']['overall']:.3f}, trained {accuracy['trained']['overall']:.3f}; "
          f"total {timings['total']['wall_s']} s wall, {timings['total']['cpu_s']} s CPU; wrote {cfg.out}/report.md")
    return accuracy


@click.command()
@click.option("--out", default="demo_out", show_default=True, help="output folder")
@click.option("--quick", is_flag=True, help="a shortened run (small data, few steps) for tests")
@click.option("--fresh", is_flag=True, help="delete --out first instead of reusing finished stages")
@click.option("--epochs", type=int, help="override the number of training epochs")
@click.option("--bare-letters", is_flag=True, help="train multiple-choice answers as the bare letter "
              "(no option check), to see what the check adds")
@click.option("--nproc", type=int, default=2, show_default=True, help="training processes (torchrun)")
def main(out, quick, fresh, epochs, bare_letters, nproc):
    """Run the whole pipeline on synthetic data and write a report."""
    # every stage runs from the repository root; --out is kept relative to it when possible so the
    # printed commands stay short
    out = os.path.relpath(os.path.abspath(out), ROOT)
    os.chdir(ROOT)
    cfg = replace(DemoConfig(out=out, nproc=nproc, option_check=not bare_letters), **(QUICK if quick else {}))
    if epochs:
        cfg = replace(cfg, epochs=epochs)
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    demo(cfg)


if __name__ == "__main__":
    main()
