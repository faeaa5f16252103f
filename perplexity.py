"""Perplexity filtering of image-caption records (paper section 3.1): a scorer model reads each
caption after its image, and the captions it finds least likely (highest perplexity) within their
source are dropped. A curation step (curate.py's record helpers, cache and step files); records
that are not captions pass, counted.

    python curate.py perplexity IN.jsonl OUT.jsonl --model DIR --keep-percentile 90

Writes OUT, OUT.dropped.jsonl, OUT.report.{json,md} (per-source cut-offs, a histogram),
OUT.scores.jsonl (one line per caption) and OUT.cache.jsonl (a rerun only scores what is new).
"""
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cli import setting
from curate import JsonlCache, is_caption, load_model, record_key, record_name, source_of
from data import SampleError, collate, encode, load_tokenizer, pad_id
from image_processor import ImageProcessor


def caption_positions(labels, stop_ids=()):
    """Positions of the caption: the last contiguous supervised run of `labels` (the last
    assistant turn), without its closing <|im_end|> (a format token, not caption text)."""
    sup = (labels != -100).nonzero().flatten().tolist()
    if not sup:
        return []
    run = [sup[-1]]
    for p in reversed(sup[:-1]):
        if p != run[-1] - 1:
            break
        run.append(p)
    run.reverse()
    while run and int(labels[run[-1]]) in stop_ids:
        run.pop()
    return run


@torch.no_grad()
def caption_nll(model, input_ids, target_mask, attention_mask=None, pixel_values=None,
                image_grid_thw=None, chunk=1024):
    """Per row: (sum of token cross-entropies over the positions in target_mask, their count).
    Logits are computed only where a caption token is predicted (position p-1 predicts token p),
    in chunks, in fp32; the full (B, L, vocab) tensor never exists."""
    hidden = model(input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                   attention_mask=attention_mask, return_hidden=True)
    rows, cols = target_mask[:, 1:].nonzero(as_tuple=True)
    h, targets = hidden[rows, cols], input_ids[rows, cols + 1]
    nll = torch.cat([F.cross_entropy(model.logits(h[s:s + chunk]).float(), targets[s:s + chunk],
                                     reduction="none") for s in range(0, len(rows), chunk)]
                    or [torch.zeros(0)])
    sums = torch.zeros(len(input_ids), dtype=torch.float64, device=nll.device)
    sums.index_add_(0, rows, nll.double())
    return sums, target_mask[:, 1:].sum(1)


@dataclass
class PerplexityConfig:
    model: str = setting("", "scorer checkpoint dir (paper: Qwen2.5-VL-3B-Instruct)")
    dtype: str = setting("float32", "scorer weights; logits and cross-entropy are always fp32")
    device: str = setting("cpu", "torch device of the scorer")
    batch_size: int = setting(8, "captions per forward")
    max_ppl: float | None = setting(None, "keep ppl <= this ...")
    keep_percentile: float | None = setting(None, "... and/or the lowest p% within each source")
    scorer: str = setting("infimed", "infimed: our model, batched | vllm: vLLM prompt log-probs")
    min_caption_tokens: int = setting(8, "ours: shorter captions have noisy perplexity")
    max_len: int = setting(4096, "paper: max sequence 4096")
    max_pixels: int = setting(262144, "paper: at most 262,144 pixels per image")


def score_records(records, model, tokenizer, processor, cfg, report, cache=None):
    """Per record: {"ppl", "n"} or {"error"}. Records are encoded a window at a time (bounded
    memory), sorted by length within the window and scored in right-padded batches."""
    cache = cache or JsonlCache(None)
    im_end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_id(tokenizer)
    keys = [record_key(r, cfg.model, cfg.dtype, cfg.max_len, cfg.max_pixels) for r in records]
    results = [cache.get(k) for k in keys]
    pending, window = [i for i, res in enumerate(results) if res is None], cfg.batch_size * 8
    dev, bar = torch.device(cfg.device), tqdm(total=len(pending), desc="perplexity", disable=None)
    for w in range(0, len(pending), window):
        todo = []
        for i in pending[w:w + window]:
            if not records[i].get("images"):
                results[i] = {"error": "no_image"}  # an image-caption score needs the image
                continue
            try:
                s = encode(records[i], tokenizer, processor, max_len=cfg.max_len)
            except (SampleError, OSError, ValueError) as e:  # not cached: retried on a rerun
                results[i] = {"error": f"unscorable:{type(e).__name__}:{str(e)[:60]}"}
                continue
            pos = caption_positions(s["labels"], {im_end})
            if len(pos) < cfg.min_caption_tokens:
                results[i] = {"error": "too_short", "n": len(pos)}
            else:
                todo.append((len(s["input_ids"]), i, s, pos))
        todo.sort(key=lambda t: t[0])
        for b in range(0, len(todo), cfg.batch_size):
            batch = todo[b:b + cfg.batch_size]
            x = collate([s for _, _, s, _ in batch], pad)  # right-padded, every record has an image
            tmask = torch.zeros_like(x["input_ids"], dtype=torch.bool)
            for row, (_, _, _, pos) in enumerate(batch):
                tmask[row, pos] = True
            sums, counts = caption_nll(model, x["input_ids"].to(dev), tmask.to(dev), x["attention_mask"].to(dev),
                                       x["pixel_values"].to(dev, next(model.parameters()).dtype),
                                       x["image_grid_thw"].to(dev))
            for row, (_, i, _, pos) in enumerate(batch):
                results[i] = {"ppl": math.exp(float(sums[row]) / int(counts[row])), "n": len(pos)}
        for i in pending[w:w + window]:
            if "ppl" in results[i] or results[i]["error"] in ("no_image", "too_short"):
                cache.put(keys[i], results[i])
        bar.update(len(pending[w:w + window]))
    return results


def score_with_prompt_logprobs(records, backend, tokenizer, cfg, report, cache=None):
    """The same scores from a backend's prompt log-probs (vLLM's prompt_logprobs through
    evaluate.py): the caption is the span between the last `<|im_start|>assistant\n` header and
    the `<|im_end|>` after it."""
    cache = cache or JsonlCache(None)
    ids_of = tokenizer.convert_tokens_to_ids
    im_start, im_end = ids_of("<|im_start|>"), ids_of("<|im_end|>")
    header = len(tokenizer("assistant\n", add_special_tokens=False)["input_ids"])
    keys = [record_key(r, cfg.model, "prompt_logprobs", cfg.max_pixels) for r in records]
    results = [cache.get(k) or ({"error": "no_image"} if not r.get("images") else None) for k, r in zip(keys, records)]
    todo = [i for i, res in enumerate(results) if res is None]
    for s in tqdm(range(0, len(todo), cfg.batch_size), desc="perplexity", disable=None):
        part = todo[s:s + cfg.batch_size]
        try:
            outs = backend.prompt_logprobs([{"messages": records[i]["messages"], "images": records[i]["images"]}
                                            for i in part])
        except Exception as e:  # counted per record, retried on a rerun
            outs = [{"error": f"unscorable:{type(e).__name__}"}] * len(part)
        for i, o in zip(part, outs):
            if "error" in o:
                results[i] = o
                continue
            ids = o["token_ids"]
            start = max(p for p, t in enumerate(ids) if t == im_start) + 1 + header
            stop = ids.index(im_end, start) if im_end in ids[start:] else len(ids)
            n = stop - start
            if n < cfg.min_caption_tokens:
                results[i] = {"error": "too_short", "n": n}
            else:
                results[i] = {"ppl": math.exp(-sum(o["logprobs"][start:stop]) / n), "n": n}
            cache.put(keys[i], results[i])
    return results


def text_histogram(values, bins=12, width=40):
    """Log-spaced histogram of perplexities as text lines."""
    if not values:
        return "(no scores)"
    lo, hi = math.log(min(values)), math.log(max(values)) + 1e-9
    step = (hi - lo) / bins or 1.0
    counts = Counter(min(int((math.log(v) - lo) / step), bins - 1) for v in values)
    top = max(counts.values())
    return "\n".join(f"{math.exp(lo + k * step):10.3f} - {math.exp(lo + (k + 1) * step):10.3f} | "
                      f"{'#' * round(width * counts[k] / top):<{width}} {counts[k]}" for k in range(bins))


def select_by_perplexity(records, results, cfg, report):
    """Keep flags: a scored caption is kept when ppl <= max_ppl and/or ppl <= the
    keep_percentile-th percentile of the captions of its source. Records without a score are
    kept and counted by why: not a caption ("not_applicable"), no image, unreadable, too short
    to score (fewer than min_caption_tokens: their perplexity is noise, not a verdict)."""
    by_src = defaultdict(list)
    for r, res in zip(records, results):
        if "ppl" in res:
            by_src[source_of(r)].append(res["ppl"])
    cut = {}
    for src, v in by_src.items():
        if cfg.keep_percentile is not None:
            cut[src] = float(torch.quantile(torch.tensor(v, dtype=torch.float64), cfg.keep_percentile / 100))
    keep = []
    for r, res in zip(records, results):
        src = source_of(r)
        if "ppl" not in res:
            ok, why = True, res["error"].split(":")[0]
            report.count(why if why == "not_applicable" else "kept:" + why, src)
        else:
            ok = (cfg.max_ppl is None or res["ppl"] <= cfg.max_ppl) and res["ppl"] <= cut.get(src, math.inf)
            report.count("kept" if ok else "dropped:perplexity", src)
        keep.append(ok)
    report.sections["cutoffs"] = {s: round(c, 4) for s, c in sorted(cut.items())}
    report.sections["histogram"] = text_histogram([p for v in by_src.values() for p in v])
    return keep


def perplexity_step(records, cfg, report, stem, model=None):
    """Scores the image-caption records (is_caption) only, selects, writes OUT.scores.jsonl (one
    line per caption) and returns the keep flags for all records."""
    captions = [i for i, r in enumerate(records) if is_caption(r)]
    todo, cache = [records[i] for i in captions], JsonlCache(stem + ".cache.jsonl")
    if not todo:
        scored = []
    elif cfg.scorer == "vllm":
        import evaluate
        backend = evaluate.make_backend("vllm", cfg.model, dtype=cfg.dtype, max_pixels=cfg.max_pixels)
        scored = score_with_prompt_logprobs(todo, backend, load_tokenizer(cfg.model), cfg, report, cache)
    else:
        model, tok = model or load_model(cfg.model, cfg.dtype, cfg.device)
        scored = score_records(todo, model, tok, ImageProcessor(max_pixels=cfg.max_pixels), cfg, report, cache)
    results = [{"error": "not_applicable"}] * len(records)
    for i, res in zip(captions, scored):
        results[i] = res
    keep = select_by_perplexity(records, results, cfg, report)
    with open(stem + ".scores.jsonl", "w") as f:
        for i in captions:
            f.write(json.dumps({"index": i, "id": record_name(records[i], i), "source": source_of(records[i]),
                                **results[i], "kept": keep[i]}) + "\n")
    return keep
