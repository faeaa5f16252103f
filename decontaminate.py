"""Benchmark decontamination of SFT data (paper section 3): a training record whose images and
question match a benchmark item is removed, by an exact pass (decoded pixels + normalized
question) and then by embedding similarity above 0.95 (gme-Qwen2-VL-style embeddings from any
checkpoint QwenVL loads, or the model-free HashEmbedder). A curation step: it reads, reports and
writes with curate.py's record helpers and step files.

    python decontaminate.py IN.jsonl OUT.jsonl --bench test.jsonl --embedder DIR|hash
    python decontaminate.py IN.jsonl OUT.jsonl --bench vqa_rad:/data/vqa_rad:test   # sources.py
    python curate.py decontaminate ...   # the same step among the other curation steps

Writes OUT, OUT.dropped.jsonl, OUT.report.{json,md} (counts per source, each removed record with
its benchmark match and score) and OUT.cache/ (embeddings: a rerun only embeds what is new).
"""
import glob
import hashlib
import json
import math
import os
import zlib
from dataclasses import dataclass

import click
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from cli import command_options, setting
from curate import (bare_question, begin_step, load_model, read_step_input, record_key, record_name, source_of,
                    strip_image_tags, turn_index, write_step_output)
from data import collate, encode_prompt, pad_id
from image_processor import ImageProcessor, open_image  # open_image: the pixels training sees
from prompts import normalize_question

# gme-Qwen2-VL's default embedding instruction (its gme_inference.py, used for every corpus item).
GME_INSTRUCTION = "You are a helpful assistant."


# --------------------------------------------------------------------------------------------
# The question a record asks


def query_of(record) -> str:
    """The question a record (ShareGPT, or load_source-style with "question") asks: its original
    question when a step rewrote the prompt (curate.remember_original), else the bare user turn."""
    if "question" in record and "messages" not in record:
        return strip_image_tags(str(record["question"]))
    original = record.get("original") or {}
    if original.get("question") is not None:
        return strip_image_tags(str(original["question"]))
    u = turn_index(record, "user")
    return bare_question(record["messages"][u]["content"])[0] if u is not None else ""


# --------------------------------------------------------------------------------------------
# Embeddings and the nearest-neighbour search


def image_hash(image) -> str:
    """Hash of the decoded pixels: a file saved again losslessly (or renamed) hashes the same."""
    im = open_image(image)
    return hashlib.sha1(f"{im.size}".encode() + im.tobytes()).hexdigest()


@torch.no_grad()
def max_similarity(train, bench, block=4096):
    """Cosine similarity of every train row to its nearest bench row: (max, argmax) per train
    row. L2-normalizes, then multiplies one train block by the whole benchmark at a time, so the
    memory is block x len(bench) instead of len(train) x len(bench) (150k x 20k fp32 = 12 GB)."""
    bench_t = F.normalize(bench.float(), dim=1).t().contiguous()
    vals, idx = torch.empty(len(train)), torch.empty(len(train), dtype=torch.long)
    buf = torch.empty(min(block, len(train)), bench_t.shape[1])
    for s in range(0, len(train), block):
        a = F.normalize(train[s:s + block].float(), dim=1)
        torch.max(torch.mm(a, bench_t, out=buf[:len(a)]), dim=1, out=(vals[s:s + len(a)], idx[s:s + len(a)]))
    return vals, idx


class HashEmbedder:
    """Deterministic, model-free embedder for tests and demos: the image as 16x16 area-averaged
    RGB pixels (mean removed) and the normalized question as signed hashed character 3-grams,
    each L2-normalized, concatenated / sqrt(2). Re-encoded or resized images and case or
    punctuation rewording stay near 1.0; unrelated items land far below 0.95."""
    name = "hash-v1"

    def __init__(self, side=16, text_dim=1024, n=3):
        self.side, self.text_dim, self.n = side, text_dim, n

    def image_vec(self, images):
        v = torch.zeros(3 * self.side * self.side)
        for im in images:
            x = torch.tensor(list(open_image(im).resize((self.side, self.side), Image.BOX).tobytes()),
                             dtype=torch.float32)
            v += F.normalize(x - x.mean(), dim=0)
        return F.normalize(v, dim=0)

    def text_vec(self, text):
        s, v = f" {normalize_question(text)} ", torch.zeros(self.text_dim)
        for i in range(len(s) - self.n + 1):
            h = zlib.crc32(s[i:i + self.n].encode())
            v[h % self.text_dim] += 1.0 if (h >> 16) & 1 else -1.0
        return F.normalize(v, dim=0)

    def __call__(self, items):
        return torch.stack([torch.cat([self.image_vec(ims), self.text_vec(q)]) / math.sqrt(2) for ims, q in items])


class ModelEmbedder:
    """gme-style embedding (gme-Qwen2-VL's gme_inference.py): the chat
    string system instruction / user = images then text / assistant header then <|endoftext|>,
    the final hidden state of the last token, L2-normalized. Any checkpoint QwenVL loads."""

    def __init__(self, model, tokenizer, processor, instruction=GME_INSTRUCTION, device="cpu", name=""):
        self.model, self.tok, self.proc, self.instruction = model.eval(), tokenizer, processor, instruction
        self.device = torch.device(device)
        # the cache key: a different checkpoint, instruction or pixel budget gives other vectors
        self.name = f"gme:{name}:{instruction}:{processor.min_pixels}-{processor.max_pixels}"
        self.pad = pad_id(tokenizer)

    def prompt(self, n_images, text):
        vision = "<|vision_start|><|image_pad|><|vision_end|>" * n_images
        return (f"<|im_start|>system\n{self.instruction}<|im_end|>\n<|im_start|>user\n{vision}{text}"
                f"<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")

    @torch.no_grad()
    def __call__(self, items):
        b = collate([encode_prompt(self.prompt(len(ims), text), [open_image(im) for im in ims], self.tok,
                                   self.proc) for ims, text in items], self.pad)  # right-padded
        ids, mask = b["input_ids"].to(self.device), b["attention_mask"].to(self.device)
        grid = b["image_grid_thw"]
        pv = b["pixel_values"].to(self.device, next(self.model.parameters()).dtype) if len(grid) else None
        hidden = self.model(ids, pv, grid.to(self.device) if len(grid) else None, attention_mask=mask,
                            return_hidden=True)
        last = hidden[torch.arange(len(ids)), mask.sum(1) - 1]
        return F.normalize(last.float(), dim=1).cpu()


class TensorCache:
    """key -> embedding, stored as chunk files in a directory (JSON is too large for vectors);
    a chunk cut by an interruption does not load and is recomputed."""

    def __init__(self, root):
        self.root, self.data, self.buf = root, {}, {}
        for p in sorted(glob.glob(os.path.join(root, "chunk_*.pt"))) if root else []:
            try:
                c = torch.load(p)
                self.data.update(zip(c["keys"], c["emb"]))
            except Exception:
                pass

    def put(self, keys, emb):
        self.data.update(zip(keys, emb))
        self.buf.update(zip(keys, emb))
        if len(self.buf) >= 1024:
            self.flush()

    def flush(self):
        if self.root and self.buf:
            os.makedirs(self.root, exist_ok=True)
            n = len(glob.glob(os.path.join(self.root, "chunk_*.pt")))
            torch.save({"keys": list(self.buf), "emb": torch.stack(list(self.buf.values()))},
                       os.path.join(self.root, f"chunk_{n:06d}.pt"))
        self.buf = {}


def embed_items(items, embedder, cache, batch_size, desc):
    """items: (image hashes, images, query). Embeds those missing from the cache."""
    keys = [record_key([h, q], embedder.name) for h, _, q in items]
    todo = [i for i, k in enumerate(keys) if k not in cache.data]
    for s in tqdm(range(0, len(todo), batch_size), desc=desc, disable=None):
        part = todo[s:s + batch_size]
        cache.put([keys[i] for i in part], embedder([(items[i][1], items[i][2]) for i in part]))
    cache.flush()
    return torch.stack([cache.data[k] for k in keys]) if keys else torch.zeros(0, 1)


# --------------------------------------------------------------------------------------------
# The step


@dataclass
class DecontamConfig:
    bench: list = setting([], "benchmark JSONL file or name:root[:split] (sources.py); repeatable")
    embedder: str = setting("hash", '"hash" (model-free) or a checkpoint dir (gme-Qwen2-VL-2B-Instruct)')
    threshold: float = setting(0.95, "paper section 3: similarity above 95% is excluded")
    block: int = setting(4096, "train rows per matrix product (memory = block x benchmark size)")
    batch_size: int = setting(8, "items per embedding forward")
    device: str = setting("cpu", "torch device of the embedder")
    dtype: str = setting("float32", "embedder weights")
    min_pixels: int = setting(256 * 28 * 28, "gme_inference.py: min_image_tokens 256")
    max_pixels: int = setting(1280 * 28 * 28, "gme_inference.py: max_image_tokens 1280")


def _hashed(records, report, side):
    """(index, image hashes, images, query) for records whose images all read; others counted."""
    out = []
    for i, r in enumerate(tqdm(records, desc=f"hash {side}", disable=None)):
        images, query = r.get("images") or [], query_of(r)
        try:
            out.append((i, [image_hash(im) for im in images], images, query))
        except Exception:
            report.count(f"{side}_unreadable_image")
        if not images:
            report.count(f"{side}_text_only")
    return out


def decontaminate(train, bench, embedder, cfg, report, cache=None):
    """Returns (keep flags, removed rows). train: ShareGPT records; bench: records or
    load_source-style dicts. An exact pass (pixel hash + normalized question) needs no model;
    the rest is compared by embedding similarity (embedder None: the exact pass only): a record
    whose nearest benchmark item scores above cfg.threshold is removed, one scoring exactly the
    threshold is kept (the paper excludes pairs "exceeding 95%")."""
    t, b = _hashed(train, report, "train"), _hashed(bench, report, "bench")
    exact = {(tuple(h), normalize_question(q)): j for j, h, _, q in b}
    keep, removed, rest = [True] * len(train), [], []

    def remove(i, q, j, kind, score):
        keep[i] = False
        removed.append({"train": record_name(train[i], i), "source": source_of(train[i]), "train_question": q,
                        "kind": kind,
                        "bench": record_name(bench[j], j), "bench_question": query_of(bench[j]), "score": score})

    for i, h, ims, q in t:
        j = exact.get((tuple(h), normalize_question(q)))
        if j is not None:
            remove(i, q, j, "exact", 1.0)
        else:
            rest.append((i, h, ims, q))
    if embedder is not None and rest and b:
        cache = cache or TensorCache(None)
        bench_emb = embed_items([x[1:] for x in b], embedder, cache, cfg.batch_size, "embed bench")
        train_emb = embed_items([x[1:] for x in rest], embedder, cache, cfg.batch_size, "embed train")
        vals, idx = max_similarity(train_emb, bench_emb, cfg.block)
        for (i, _, _, q), v, j in zip(rest, vals.tolist(), idx.tolist()):
            if v > cfg.threshold:
                remove(i, q, b[j][0], "embedding", round(v, 6))
    checked = {x[0] for x in t}
    for i, (r, k) in enumerate(zip(train, keep)):
        report.count("dropped:contaminated" if not k else "kept" if i in checked else
                     "kept:unchecked_unreadable_image", source_of(r))
    report.sections["removed"] = removed
    return keep, removed


def load_bench(spec):
    """Benchmark items from a JSONL file (ShareGPT or load_source-style lines, image paths
    relative to the file) or from `name:root[:split]` through sources.load_source."""
    if not os.path.exists(spec):
        import sources
        name, root, split = (spec.split(":") + ["test"])[:3]
        return sources.load_source(name, root, split)
    base, rows = os.path.dirname(os.path.abspath(spec)), []
    with open(spec) as f:
        for r in (json.loads(line) for line in f if line.strip()):
            r["images"] = [os.path.join(base, im) for im in r.get("images") or []]  # join keeps absolute paths
            rows.append(r)
    return rows


def make_embedder(cfg):
    if cfg.embedder == "hash":
        return HashEmbedder()
    model, tok = load_model(cfg.embedder, cfg.dtype, cfg.device)
    return ModelEmbedder(model, tok, ImageProcessor(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels),
                         device=cfg.device, name=os.path.abspath(cfg.embedder))


def run_step(in_path, out_path, cfg, embedder=None):
    """Read IN, remove contaminated records, write OUT (+ reports, OUT.dropped.jsonl, OUT.cache/)."""
    specs = [cfg.bench] if isinstance(cfg.bench, str) else list(cfg.bench)
    bench = [x for spec in specs for x in load_bench(spec)]
    if not bench:
        raise click.UsageError("decontaminate needs at least one --bench file or name:root[:split]")
    records, report = read_step_input("decontaminate", in_path, cfg)
    begin_step("decontaminate", out_path)
    report.sections["bench"] = {"specs": ", ".join(specs), "items": len(bench)}
    keep, _ = decontaminate(records, bench, embedder or make_embedder(cfg), cfg, report,
                            TensorCache(os.path.splitext(out_path)[0] + ".cache"))
    return write_step_output(records, keep, out_path, report)


@click.command()
@click.argument("in_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_path", type=click.Path(dir_okay=False))
@command_options(DecontamConfig)
def main(in_path, out_path, **settings):
    """Remove the records of IN_PATH that match a benchmark item, writing OUT_PATH."""
    click.echo(json.dumps(dict(run_step(in_path, out_path, DecontamConfig(**settings)).counts), indent=1))


if __name__ == "__main__":
    main()
