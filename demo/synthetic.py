"""Synthetic medical VQA: generated scans with lesions, questions over the paper's skills.
Run from the repository root (demo/run.py runs it the same way):

    python -m demo.synthetic -o synth --n-train 20000 --n-test 500 --seed 0

Writes into the output folder:
    images/{train,test}_NNNNNN.png   grayscale scans (image_size px square)
    train.jsonl                      ShareGPT SFT records (sources.to_sharegpt), image paths relative
    test.jsonl                       benchmark records, read by load_source("synthetic", DIR, "test")
    captions.jsonl                   one caption per image: {"image", "caption", "split"}

Each image is one of four modality styles with global cues a small model learns quickly
(CT: round body with a bright bone ring and fine noise; MRI: tall ellipse with a smooth bias
field; X-ray: full frame with rib stripes and a vertical gradient; ultrasound: a sector with
speckle). It carries 0-3 lesions, each a circle/square/triangle, bright or dark, small or large,
whose centre lies in the left or right half with a margin from the midline. Questions cover
modality recognition, lesion presence, lesion shape/brightness/size, counting and left/right
localization, as multiple choice (options shuffled from the seed), closed yes/no, or open.
Lesion attributes are only asked when the image has exactly one lesion, so every answer is a
function of the stored metadata. Lesions are large and high-contrast by default because small
local features are hard to learn from scratch; `SynthConfig` holds every knob.

`build_tokenizer` is the stand-in for a downloaded tokenizer: a small byte-level BPE trained on
the demo's text that carries the real Qwen2 special tokens and Qwen2.5-VL chat template.
`pretrain_vision` is the stand-in for Qwen2.5-VL's pretrained vision tower: it trains a random
tower to state what the training captions say (`caption_labels`) through linear heads on the mean
of its output tokens, a path short enough to teach it lesion shape and side in a few hundred steps.
"""
import hashlib
import json
import math
import os
import random
import re
from dataclasses import asdict, dataclass

import click
import numpy as np
from PIL import Image
from tqdm import tqdm

import data
import prompts
import sources

MODALITIES = ("CT", "MRI", "X-ray", "ultrasound")
SHAPES = ("circle", "square", "triangle")
SKILLS = ("modality", "presence", "shape", "brightness", "size", "count", "side")
LESION_SKILLS = ("shape", "brightness", "size", "side")  # asked only when there is one lesion
# answer forms each skill supports (presence is yes/no by nature; counts and modality are not)
FORMS = {"modality": ("choice", "open"), "presence": ("closed",), "count": ("choice", "open"),
         "shape": ("choice", "open", "closed"), "brightness": ("choice", "open", "closed"),
         "size": ("choice", "open", "closed"), "side": ("choice", "open", "closed")}


@dataclass
class SynthConfig:
    image_size: int = 112
    questions_per_image: int = 3
    lesion_count_probs: tuple = (0.3, 0.4, 0.15, 0.15)   # P(0), P(1), P(2), P(3) lesions
    small_radius: tuple = (0.14, 0.17)   # half-extent as a fraction of image_size (16-19 px at 112)
    large_radius: tuple = (0.23, 0.27)   # (26-30 px at 112): never confusable with small
    side_margin: float = 0.09            # lesion centre at least this far from the midline (10 px)
    gap: float = 0.04                    # minimum empty space between two lesions
    bright: float = 240.0                # lesion intensities; tissue lies in ~90-170
    dark: float = 20.0
    noise: float = 1.0                   # scales every modality's noise
    modalities: tuple = MODALITIES
    skills: tuple = SKILLS


# ----------------------------------------------------------------------------- images
def _grid(n):
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return yy, xx


def background(modality, n, rng, cfg):
    """(image float32 [n, n], body mask bool [n, n]) for one modality style."""
    yy, xx = _grid(n)
    c = (n - 1) / 2
    nz = cfg.noise
    if modality == "CT":  # round body, bright bone ring, fine noise, black air
        d = np.hypot(yy - c, xx - c) / (0.5 * n)
        body = d < 1.0
        img = np.where(body, 125.0, 5.0) + np.where((d > 0.93) & body, 100.0, 0.0)
        img = img + rng.normal(0, 6 * nz, (n, n))
        body = d < 0.92
    elif modality == "MRI":  # tall ellipse, smooth bias field, little noise
        d = np.hypot((yy - c) / (0.5 * n), (xx - c) / (0.43 * n))
        body = d < 1.0
        field = 130 + 30 * np.sin(xx / n * math.pi * rng.uniform(0.8, 1.2) + rng.uniform(0, 6)) * (yy / n)
        img = np.where(body, field, 0.0) + rng.normal(0, 2 * nz, (n, n))
        body = d < 0.95
    elif modality == "X-ray":  # full frame, rib stripes, vertical gradient
        period = rng.uniform(0.10, 0.14) * n
        img = 110 + 40 * (1 - yy / n) + 22 * np.sin(2 * math.pi * yy / period) + rng.normal(0, 4 * nz, (n, n))
        body = np.ones((n, n), bool)
        body[: int(0.04 * n)] = body[-int(0.04 * n):] = False
        body[:, : int(0.04 * n)] = body[:, -int(0.04 * n):] = False
    elif modality == "ultrasound":  # sector from the top centre with multiplicative speckle
        ang = np.degrees(np.arctan2(xx - c, yy + 0.15 * n))
        rad = np.hypot(xx - c, yy + 0.15 * n)
        body = (np.abs(ang) < 48) & (rad < 1.12 * n) & (rad > 0.25 * n)
        speckle = rng.rayleigh(1.0, (n, n)) / 1.25
        img = np.where(body, 115 * (1 + (speckle - 1) * 0.6 * nz), 0.0)
        body = (np.abs(ang) < 44) & (rad < 1.08 * n) & (rad > 0.3 * n)
    else:
        raise ValueError(f"unknown modality {modality!r}")
    return img.astype(np.float32), body


def lesion_mask(shape, cx, cy, r, n):
    """(window slices, bool mask over that window) of a lesion with half-extent r: circle of
    radius r, square of half-side r, triangle with base and height 2r (apex up). Extent, not
    area, defines 'size'. Working on the lesion's window keeps generation fast."""
    y0, y1 = max(0, int(cy - r) - 1), min(n, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r) - 1), min(n, int(cx + r) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    if shape == "circle":
        m = np.hypot(xx - cx, yy - cy) <= r
    elif shape == "square":
        m = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    elif shape == "triangle":
        t = (yy - (cy - r)) / (2 * r)  # 0 at the apex, 1 at the base
        m = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= t * r)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return (slice(y0, y1), slice(x0, x1)), m


def place_lesions(count, body, rng, cfg, tries=100):
    """`count` non-overlapping lesions wholly inside the body, each centre clearly in one half.
    Returns a list of dicts (shape, brightness, size, side, cx, cy, r), or None on failure."""
    n = cfg.image_size
    lesions = []
    grow = cfg.gap * n
    for _ in range(count):
        for _try in range(tries):
            # several lesions must fit together, so they are small; a single one may be either
            size = "small" if count > 1 else ("small", "large")[rng.integers(2)]
            lo, hi = cfg.small_radius if size == "small" else cfg.large_radius
            r = rng.uniform(lo, hi) * n
            side = ("left", "right")[rng.integers(2)]
            m = cfg.side_margin * n
            cx = rng.uniform(r, n / 2 - m) if side == "left" else rng.uniform(n / 2 + m, n - r)
            cy = rng.uniform(r, n - r)
            shape = SHAPES[rng.integers(len(SHAPES))]
            # cheap rejections first: the extreme points must lie in the body, and the lesion's
            # box (plus gap) must clear every earlier lesion's box
            if not all(body[int(y), int(x)] for y, x in ((cy, cx - r), (cy, cx + r - 1), (cy + r - 1, cx))):
                continue
            if any(max(abs(cx - o["cx"]), abs(cy - o["cy"])) < r + o["r"] + grow for o in lesions):
                continue
            win, mask = lesion_mask(shape, cx, cy, r, n)
            if not body[win][mask].all():
                continue
            lesions.append({"shape": shape, "brightness": ("bright", "dark")[rng.integers(2)],
                            "size": size, "side": side, "cx": round(float(cx), 2),
                            "cy": round(float(cy), 2), "r": round(float(r), 2)})
            break
        else:
            return None
    return lesions


def paint(img, lesions, rng, cfg):
    """uint8 [n, n] image: the background with the lesions painted in (plus light noise)."""
    n = cfg.image_size
    for les in lesions:
        win, mask = lesion_mask(les["shape"], les["cx"], les["cy"], les["r"], n)
        value = cfg.bright if les["brightness"] == "bright" else cfg.dark
        img[win][mask] = value + rng.normal(0, 4 * cfg.noise, int(mask.sum()))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_scan(rng, cfg):
    """One scan: (pixels uint8, modality, lesions)."""
    modality = cfg.modalities[rng.integers(len(cfg.modalities))]
    img, body = background(modality, cfg.image_size, rng, cfg)
    p = np.asarray(cfg.lesion_count_probs, dtype=float)
    count = int(rng.choice(len(p), p=p / p.sum()))
    lesions = None
    while lesions is None:  # placement of this many lesions failed: try a new layout
        lesions = place_lesions(count, body, rng, cfg)
    return paint(img, lesions, rng, cfg), modality, lesions


# ----------------------------------------------------------------------------- questions
NUMBER = ["0", "1", "2", "3"]


def answer_for(skill, modality, lesions):
    """The open-form answer of a skill, computed from the metadata alone."""
    if skill == "modality":
        return modality
    if skill == "presence":
        return "yes" if lesions else "no"
    if skill == "count":
        return str(len(lesions))
    assert len(lesions) == 1, "lesion attributes are asked only with one lesion"
    return lesions[0][skill]


CHOICES = {"modality": MODALITIES, "count": NUMBER, "shape": SHAPES, "brightness": ("bright", "dark"),
           "size": ("small", "large"), "side": ("left", "right")}
OPEN_Q = {"modality": "Which imaging modality was used to acquire this image?",
          "count": "How many lesions are visible in this image?",
          "shape": "What is the shape of the lesion?",
          "brightness": "Is the lesion bright or dark compared with the surrounding tissue?",
          "size": "Is the lesion small or large?",
          "side": "On which side of the image is the lesion, left or right?"}
CLOSED_Q = {"presence": "Is there a lesion in this image?",
            "shape": "Is the lesion a {v}?",
            "brightness": "Is the lesion {v} compared with the surrounding tissue?",
            "size": "Is the lesion {v}?",
            "side": "Is the lesion on the {v} side of the image?"}


def make_question(skill, form, modality, lesions, rng):
    """(question, answer, options or None). Options are shuffled by rng (from the seed)."""
    truth = answer_for(skill, modality, lesions)
    if form == "choice":
        values = list(CHOICES[skill])
        rng.shuffle(values)
        options = dict(zip(prompts.LETTERS, values))
        letter = next(L for L, v in options.items() if v == truth)
        return OPEN_Q[skill], letter, options
    if form == "closed":
        if skill == "presence":
            return CLOSED_Q[skill], truth, None
        v = truth if rng.random() < 0.5 else rng.choice([c for c in CHOICES[skill] if c != truth])
        return CLOSED_Q[skill].format(v=v), "yes" if v == truth else "no", None
    return OPEN_Q[skill], truth, None


def caption(modality, lesions):
    names = {"CT": "A CT scan", "MRI": "An MRI scan", "X-ray": "An X-ray image", "ultrasound": "An ultrasound image"}
    if not lesions:
        return f"{names[modality]} with no visible lesion."
    words = ["one", "two", "three"][len(lesions) - 1]
    parts = [f"a {l['size']} {l['brightness']} {l['shape']} on the {l['side']} side" for l in lesions]
    return f"{names[modality]} showing {words} lesion{'s' if len(lesions) > 1 else ''}: " + "; ".join(parts) + "."


def split_seed(seed, split):
    """Independent streams per split: train and test never share a generator state."""
    return int(hashlib.sha256(f"infimed-synthetic:{seed}:{split}".encode()).hexdigest()[:16], 16)


def make_split(split, n_questions, seed, cfg, avoid=frozenset()):
    """Yield (image_id, pixels, modality, lesions, [records]) until n_questions records exist.
    Images whose pixel hash is in `avoid` are regenerated (keeps splits disjoint)."""
    rng = np.random.default_rng(split_seed(seed, split))
    qrng = random.Random(split_seed(seed, split + ":questions"))
    made, k = 0, 0
    while made < n_questions:
        pixels, modality, lesions = make_scan(rng, cfg)
        h = hashlib.sha1(pixels.tobytes()).hexdigest()
        if h in avoid:
            continue
        image_id = f"{split}_{k:06d}"
        k += 1
        skills = [s for s in cfg.skills if len(lesions) == 1 or s not in LESION_SKILLS]
        chosen = qrng.sample(skills, min(cfg.questions_per_image, len(skills), n_questions - made))
        records = []
        for j, skill in enumerate(chosen):
            form = qrng.choice(FORMS[skill])
            q, a, options = make_question(skill, form, modality, lesions, qrng)
            records.append({"id": f"synthetic-{image_id}-{j}", "question": q, "answer": a, "options": options,
                            "images": [f"images/{image_id}.png"],
                            "meta": {"skill": skill, "form": form, "modality": modality, "lesions": lesions,
                                     "image_id": image_id, "pixel_sha1": h}})
        made += len(records)
        yield image_id, pixels, modality, lesions, records


def generate(out_dir, n_train=20000, n_test=500, seed=0, image_size=112, cfg=None, progress=True):
    """Write images, train.jsonl, test.jsonl and captions.jsonl; returns a summary dict.
    `cfg` (a SynthConfig) overrides `image_size`. Rerunning into the same folder replaces it."""
    cfg = cfg or SynthConfig(image_size=image_size)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    summary, hashes = {"config": asdict(cfg), "seed": seed}, set()
    captions = open(os.path.join(out_dir, "captions.jsonl.tmp"), "w")
    for split, n in (("test", n_test), ("train", n_train)):  # test first: train avoids its images
        records, n_images = [], 0
        with tqdm(total=n, desc=f"synthetic {split}", unit="q", disable=not progress) as bar:
            for image_id, pixels, modality, lesions, recs in make_split(split, n, seed, cfg, frozenset(hashes)):
                Image.fromarray(pixels).save(os.path.join(out_dir, "images", f"{image_id}.png"), compress_level=1)
                hashes.add(recs[0]["meta"]["pixel_sha1"])
                captions.write(json.dumps({"image": f"images/{image_id}.png", "caption": caption(modality, lesions),
                                           "split": split}) + "\n")
                records += recs
                n_images += 1
                bar.update(len(recs))
        path = os.path.join(out_dir, f"{split}.jsonl")
        with open(path + ".tmp", "w") as f:
            for r in records:
                # augment: training covers every INSTRUCTIONS template, the evaluation prompts included
                row = r if split == "test" else {"id": r["id"], **sources.to_sharegpt(r, augment=True, seed=seed)}
                f.write(json.dumps(row) + "\n")
        os.replace(path + ".tmp", path)
        summary[split] = {"questions": len(records), "images": n_images}
    captions.close()
    os.replace(os.path.join(out_dir, "captions.jsonl.tmp"), os.path.join(out_dir, "captions.jsonl"))
    written = {f"{s}_{k:06d}.png" for s in ("train", "test") for k in range(summary[s]["images"])}
    for name in os.listdir(os.path.join(out_dir, "images")):  # leftovers of an earlier, larger run
        if name.startswith(("train_", "test_")) and name not in written:
            os.remove(os.path.join(out_dir, "images", name))
    return summary


# -------------------------------------------------------- captions -> labels, vision pretraining
def caption_attributes(text):
    """{attribute: the one value of it that `text` names, or None} for a lesion's shape,
    brightness, size and side: 'a large dark square on the left side' -> large, dark, square, left."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    named = {a: [v for v in CHOICES[a] if v in words] for a in LESION_SKILLS}
    return {a: v[0] if len(v) == 1 else None for a, v in named.items()}


CAPTION_COUNTS = {"no": 0, "one": 1, "two": 2, "three": 3}


def caption_labels(text):
    """The class labels a caption (see `caption`) states, as indices into CHOICES: modality,
    lesion count and, for a single lesion, shape, brightness, size and side; -100 (what the loss
    ignores) for what it does not state.
    'An MRI scan showing one lesion: a large dark square on the left side.' -> MRI, 1, square, ..."""
    words = re.findall(r"[a-z-]+", text.lower())
    modality = [i for i, m in enumerate(CHOICES["modality"]) if m.lower() in words]
    count = [CAPTION_COUNTS[w] for w in words if w in CAPTION_COUNTS]  # "no visible lesion", "two lesions"
    labels = {"modality": modality[0] if len(modality) == 1 else -100, "count": count[0] if len(count) == 1 else -100}
    for a, v in caption_attributes(text).items():
        labels[a] = CHOICES[a].index(v) if v is not None and labels["count"] == 1 else -100
    return labels


def pretrain_vision(model, pixel_values, grid_thw, labels, steps, lr, batch, seed, log=print):
    """Trains model.visual (tower and merger) to state each label from the mean of an image's merged
    tokens, through one linear head per label that is thrown away afterwards. pixel_values
    (n_images, patches, dim), one grid_thw (1, 3) for all; labels {name: (n_images,) class indices,
    -100 = unknown}, each name a key of CHOICES. AdamW, warmup then cosine (train.lr_at). Returns
    predict(pixel_values) -> {name: logits}, to probe what the tower has learned."""
    import torch
    import torch.nn.functional as F
    import train
    vis, width = model.visual, model.config.vision.out_hidden_size
    torch.manual_seed(seed)
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(width, len(CHOICES[k])) for k in labels})
    sched = train.TrainConfig(lr=lr, warmup_ratio=0.05)
    opt = torch.optim.AdamW(list(vis.parameters()) + list(heads.parameters()), lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)

    def predict(x):
        h = vis(x.flatten(0, 1), grid_thw.repeat(len(x), 1)).view(len(x), -1, width).mean(1)
        return {k: head(h) for k, head in heads.items()}

    for step in tqdm(range(steps), desc="vision pretraining"):
        for g in opt.param_groups:
            g["lr"] = train.lr_at(step, steps, sched)
        idx = torch.randint(0, len(pixel_values), (batch,), generator=order)
        out = predict(pixel_values[idx])
        known = {k: labels[k][idx] >= 0 for k in heads}
        loss = sum(F.cross_entropy(out[k][m], labels[k][idx][m]) for k, m in known.items() if m.any())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 200 == 0 or step + 1 == steps:
            log(f"step {step + 1}: loss {loss.item():.3f}")
    return predict


# ----------------------------------------------------------------------------- tokenizer
# Real checkpoints bring their tokenizer; the demo and the tests train a small BPE on their own
# text instead, with the real Qwen2 pre-tokenizer, special tokens and chat template, so every
# id that code reads from a tokenizer means what it means in Qwen2.5-VL.

# Qwen2 pre-tokenizer split (Qwen2 tokenizer.json, "pre_tokenizer" Split pattern).
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                           r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# The real Qwen2.5-VL chat template (Qwen2.5-VL-*-Instruct chat_template.json), byte for byte.
# Kept here so a tokenizer directory built by build_tokenizer carries it without other files.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tokenizer(texts, out_dir, vocab_size=2048):
    """Train a small byte-level BPE on `texts` with the Qwen2 pipeline (NFC, Qwen2 split regex,
    byte-level), append the Qwen2 special tokens, save a directory that AutoTokenizer and
    `load_tokenizer` read (chat template included) and return the loaded tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # every one of the 256 byte symbols is in the vocabulary, so any text encodes (byte-level)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in data.SPECIAL_TOKENS])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    # As Qwen2.5-VL-Instruct's tokenizer_config.json: no BOS, eos <|im_end|>, pad <|endoftext|>.
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "errors": "replace", "split_special_tokens": False,
        "model_max_length": 131072, "additional_special_tokens": data.SPECIAL_TOKENS[1:],
        "chat_template": QWEN2_5_VL_CHAT_TEMPLATE}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    return data.load_tokenizer(out_dir)


@click.command()
@click.option("-o", "--out", required=True, help="output folder")
@click.option("--n-train", default=20000, show_default=True, help="training questions")
@click.option("--n-test", default=500, show_default=True, help="test questions")
@click.option("--seed", default=0, show_default=True)
@click.option("--image-size", default=112, show_default=True)
@click.option("--questions-per-image", default=3, show_default=True)
def main(out, n_train, n_test, seed, image_size, questions_per_image):
    """Generate the synthetic medical VQA set."""
    cfg = SynthConfig(image_size=image_size, questions_per_image=questions_per_image)
    s = generate(out, n_train, n_test, seed, cfg=cfg)
    for split in ("train", "test"):
        click.echo(f"{split}: {s[split]['questions']} questions on {s[split]['images']} images")
    click.echo(f"wrote {out}/train.jsonl, test.jsonl, captions.jsonl, images/")


if __name__ == "__main__":
    main()
