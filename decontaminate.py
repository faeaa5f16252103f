"""Benchmark decontamination of SFT data (paper section 3): a training
record whose images and question match a benchmark item is removed, by an exact pass (decoded
pixels + normalized question) and then by embedding similarity above 0.95 (gme-Qwen2-VL-style
embeddings from any checkpoint QwenVL loads, or the model-free HashEmbedder). Needs data.py.

    python decontaminate.py IN.jsonl OUT.jsonl --bench test.jsonl --embedder DIR|hash
    python decontaminate.py IN.jsonl OUT.jsonl --bench vqa_rad:/data/vqa_rad:test   # sources.py
    python curate.py decontaminate ...   # the same step among the other curation steps

Writes OUT, OUT.dropped.jsonl, OUT.report.{json,md} (counts per source, each removed record with
its benchmark match and score) and OUT.cache/ (embeddings: a rerun only embeds what is new).
The record helpers, Report and step files here also serve curate.py's steps.
"""
import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import click
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

# open_image: the pixels training sees
from data import collate, encode_prompt, open_image, pad_id, read_sharegpt, write_sharegpt
from prompts import COT_PROMPT, INSTRUCTIONS, normalize_question, split_options

# gme-Qwen2-VL's default embedding instruction (its gme_inference.py, used for every corpus item).
GME_INSTRUCTION = "You are a helpful assistant."

# --------------------------------------------------------------------------------------------
# Records, reports, step files


def record_key(obj, *salt) -> str:
    """Stable hash of a record (plus the step settings that change its result)."""
    blob = json.dumps([obj, salt], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def source_of(record) -> str:
    return str(record.get("source") or (record.get("meta") or {}).get("source") or "unknown")


def record_name(record, index) -> str:
    return str(record.get("id") or (record.get("meta") or {}).get("id") or f"#{index}")


def turn_index(record, role, last=False):
    idx = [i for i, m in enumerate(record.get("messages", [])) if m.get("role") == role]
    return (idx[-1] if last else idx[0]) if idx else None


def strip_image_tags(text: str) -> str:
    return text.replace("<image>", "").strip()


class Report:
    """Counts (overall and per source), settings and extra sections, written as JSON and Markdown."""

    def __init__(self, step, config=None):
        self.step, self.config = step, dataclasses.asdict(config) if config else {}
        self.counts, self.by_source, self.sections = Counter(), defaultdict(Counter), {}

    def count(self, what, source=None, n=1):
        self.counts[what] += n
        if source is not None:
            self.by_source[source][what] += n

    def to_dict(self):
        return {"step": self.step, "complete": True, "config": self.config, "counts": dict(self.counts),
                "by_source": {s: dict(c) for s, c in sorted(self.by_source.items())}, **self.sections}

    def write(self, out_path):
        stem = os.path.splitext(out_path)[0]
        with open(stem + ".report.json", "w") as f:
            json.dump(self.to_dict(), f, indent=1, ensure_ascii=False, default=str)
        cols = sorted({k for c in self.by_source.values() for k in c})
        md = [f"# {self.step}: {out_path}", _table(["setting", "value"], self.config.items()),
              _table(["count", "n"], sorted(self.counts.items())),
              _table(["source"] + cols, [[s] + [c.get(k, 0) for k in cols] for s, c in sorted(self.by_source.items())])]
        for name, v in self.sections.items():
            md.append(f"## {name}\n\n" + (f"```\n{v}\n```" if isinstance(v, str) else
                                          _table(["key", "value"], v.items()) if isinstance(v, dict) else
                                          _table(list(v[0]), [r.values() for r in v]) if v else "(none)"))
        with open(stem + ".report.md", "w") as f:
            f.write("\n\n".join(md) + "\n")


def _table(header, rows):
    cell = lambda v: (f"{v:.4f}" if isinstance(v, float) else str(v)).replace("|", "\\|").replace("\n", " ")[:200]
    return "\n".join(["| " + " | ".join(map(cell, r)) + " |" for r in [header, ["---"] * len(header)] + list(rows)])


def begin_step(step, out_path):
    """Mark OUT's report incomplete until the step writes its real one: a step killed midway
    leaves a report that says so, and the next step refuses OUT (read_step_input)."""
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    with open(os.path.splitext(out_path)[0] + ".report.json", "w") as f:
        json.dump({"step": step, "complete": False}, f)


def read_step_input(step, in_path, cfg):
    """(records, report) for a step over IN: records data.read_sharegpt cannot use are counted
    per reason, with one example message (file and line) per reason. IN is refused when its own
    report says the step that wrote it did not finish."""
    side = os.path.splitext(in_path)[0] + ".report.json"
    if os.path.exists(side):
        try:
            done = json.load(open(side)).get("complete", True)
        except (json.JSONDecodeError, AttributeError):
            done = False
        if not done:
            raise click.UsageError(f"{in_path}: its report {side} says the step that writes it did not finish; "
                                   "rerun that step (it resumes from its cache) before this one")
    records, info = read_sharegpt(in_path)
    report = Report(step, cfg)
    report.sections["input"] = {"path": in_path, "records": len(records), "unreadable_lines": info["read"] - info["kept"]}
    for r in records:
        report.count("in", source_of(r))
    for reason, n in info["skipped"].items():
        report.count(f"dropped:invalid_record:{reason}", n=n)
    report.sections["invalid_records"] = info["examples"]
    return records, report


def write_step_output(records, keep, out_path, report):
    """OUT (kept records), OUT.dropped.jsonl (the others, if any), OUT.report.json/.md. The
    report's per-source table gets "in" (read_step_input) and "out" columns."""
    write_sharegpt([r for r, k in zip(records, keep) if k], out_path)
    if not all(keep):
        write_sharegpt([r for r, k in zip(records, keep) if not k], os.path.splitext(out_path)[0] + ".dropped.jsonl")
    for r, k in zip(records, keep):
        if k:
            report.by_source[source_of(r)]["out"] += 1
    report.counts["output_records"] = sum(keep)
    report.write(out_path)
    return report


def config_command(cls):
    """Decorator: IN_PATH OUT_PATH arguments and one --flag per field of the dataclass `cls`."""
    def add(command):
        for f in reversed(dataclasses.fields(cls)):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            flag = "--" + f.name.replace("_", "-")
            if f.type is bool:
                command = click.option(flag, f.name, is_flag=True, default=default)(command)
                continue
            kind = f.type if f.type in (int, float, str) else (str if isinstance(default, list) else float)
            command = click.option(flag, f.name, type=kind, default=default,
                                   multiple=isinstance(default, list), show_default=True)(command)
        return click.argument("in_path", type=click.Path(exists=True, dir_okay=False))(
            click.argument("out_path", type=click.Path(dir_okay=False))(command))
    return add


def load_model(path, dtype, device):
    from data import load_tokenizer
    from infimed import QwenVL
    model = QwenVL.from_pretrained(path, dtype=getattr(torch, dtype), device=device).eval()
    return model, load_tokenizer(path)


# --------------------------------------------------------------------------------------------
# Questions: what a record asks, without the wording curation adds

def parse_options(text):
    """A multiple-choice user turn -> (stem, {letter: option text}) without image tags; options
    None when the text holds no run of option lines A., B., ... (prompts.split_options)."""
    return split_options(strip_image_tags(text))


def template_question(text, templates):
    """The {question} slot of the first template (instructions filled in) that matches text; a
    {letters} slot matches any letter list."""
    for t in templates:
        if "{options}" not in t:
            pattern = re.escape(t).replace(re.escape("{question}"), "(?P<q>.+)")
            m = re.fullmatch(pattern.replace(re.escape("{letters}"), r"[^)]*"), text, re.S)
            if m:
                return m.group("q").strip() if "q" in m.groupdict() else ""
    return None


def bare_question(text):
    """(question, options) without image tags, option lines, the instruction a template of
    prompts.INSTRUCTIONS added or the chain-of-thought prompt around it (prompts.cot_prompt), so
    raw, augmented and CoT copies of a question compare alike."""
    text = strip_image_tags(text)
    cot = COT_PROMPT.replace("{QUESTION}", "{question}").replace("(A, B, C, and D)", "({letters})")
    text = template_question(text, [cot]) or text
    stem, options = parse_options(text)
    if options is None:
        stem = next((q for k, v in INSTRUCTIONS.items() if k != "caption"
                     for q in [template_question(stem, v)] if q), stem)
    return stem, options


def query_of(record) -> str:
    """The question a record (ShareGPT, or load_source-style with "question") asks: its original
    question when a step rewrote the prompt (remember_original), else the bare user turn."""
    if "question" in record and "messages" not in record:
        return strip_image_tags(str(record["question"]))
    original = record.get("original") or {}
    if original.get("question") is not None:
        return strip_image_tags(str(original["question"]))
    u = turn_index(record, "user")
    return bare_question(record["messages"][u]["content"])[0] if u is not None else ""


def remember_original(record):
    """Before a step rewrites a record's prompt (augmentation, chain of thought, caption
    refinement): store what it asks, its question and options, in record["original"] once, so
    decontamination compares the original item however later steps reword it. Returns record."""
    if not (record.get("original") or {}).get("question"):
        u = turn_index(record, "user")
        stem, options = bare_question(record["messages"][u]["content"]) if u is not None else ("", None)
        record["original"] = {"question": stem, "options": options}
    return record


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
    bench: list = field(default_factory=list)  # benchmark JSONL files or name:root[:split]
    embedder: str = "hash"      # "hash" (model-free) or a checkpoint dir (gme-Qwen2-VL-2B-Instruct)
    threshold: float = 0.95     # paper section 3: similarity above 95% is excluded
    block: int = 4096           # train rows per matrix product (memory = block x benchmark size)
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    min_pixels: int = 256 * 28 * 28   # gme_inference.py: min_image_tokens 256
    max_pixels: int = 1280 * 28 * 28  # gme_inference.py: max_image_tokens 1280


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
    from data import ImageProcessor
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
@config_command(DecontamConfig)
def main(in_path, out_path, **options):
    """Remove the records of IN_PATH that match a benchmark item, writing OUT_PATH."""
    click.echo(json.dumps(dict(run_step(in_path, out_path, DecontamConfig(**options)).counts), indent=1))


if __name__ == "__main__":
    main()
