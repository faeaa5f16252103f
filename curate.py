"""Data curation for Infi-Med SFT data (paper section 3 and appendix A).

Every step reads and writes ShareGPT JSONL and leaves a sidecar report (OUT.report.json and
OUT.report.md) saying what it kept, changed or dropped and why. Steps are resumable: per-record
results live in OUT.cache.jsonl (or OUT.cache/ for embeddings) keyed by a hash of the record and
the step's settings, so a rerun only computes what is missing. Decontamination lives in
decontaminate.py (self-contained, also runnable alone); its record helpers, report and step
files serve every step here.

    python curate.py augment       IN.jsonl OUT.jsonl
    python curate.py cot           IN.jsonl OUT.jsonl --teacher DIR --k 4 --temperature 0.8
    python curate.py caption       IN.jsonl OUT.jsonl --teacher DIR
    python curate.py perplexity    IN.jsonl OUT.jsonl --model DIR --keep-percentile 90
    python curate.py decontaminate IN.jsonl OUT.jsonl --bench test.jsonl --embedder DIR|hash
    python curate.py pipeline      SPEC.json   # {"steps": [{"step": "cot", "in": ..., ...}, ...]}
"""
import dataclasses
import json
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import click
import torch
import torch.nn.functional as F
from tqdm import tqdm

import decontaminate
from decontaminate import (DecontamConfig, bare_question, config_command, load_model, normalize_question,
                           parse_options, read_step_input, record_key, record_name, source_of,
                           strip_image_tags, template_question, turn_index, write_step_output)

# --------------------------------------------------------------------------------------------
# Prompts: appendix A of the paper, word for word ({QUESTION} and {ORIGINAL CAPTION} are the
# paper's slots; the PDF renders the numbered steps as a list, kept here as plain lines).

COT_PROMPT = """Please carefully analyze the following multiple-choice question by generating a clear, logical chain of thought that leads to the correct answer. To do this effectively, follow the steps below as a general guide for your response:

1. Begin by identifying the key elements of the question and interpreting any relevant facts or assumptions.
2. Consider each option (A, B, C, and D) and reason through its validity based on logic, knowledge, or deduction.
3. Organize your reasoning into a step-by-step format to enhance readability and clarity.
4. After completing your reasoning, indicate the final answer by enclosing the selected option letter within <answer> and </answer> tags, e.g., <answer>A</answer>.
5. Do not include any additional commentary or explanation outside of these tags.

Question:

{QUESTION}"""

CAPTION_PROMPT = """You are a medical image captioning assistant. Your task is to rephrase the following scientific image description into a clear, concise, and visually grounded caption that should help a small vision-language model understand what the image shows. Please ensure the caption:

1. Accurately reflects the key visual features shown in the image, such as structures, shapes, colors, and biological elements.
2. Maintains medical correctness, while simplifying overly complex or technical language where appropriate.

Original description:

{ORIGINAL CAPTION}

Now rewrite this as a simplified, image-grounded caption suitable for training a vision-language model."""

# --------------------------------------------------------------------------------------------
# Teacher calls and their cache


class JsonlCache:
    """key -> result, appended line by line so an interrupted run keeps what it finished."""

    def __init__(self, path):
        self.data = {}
        if path and os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.data[row["key"]] = row["value"]
                    except (json.JSONDecodeError, KeyError):
                        pass  # a line cut by an interruption: recomputed
        self._f = open(path, "a") if path else None

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value
        if self._f:
            self._f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
            self._f.flush()


def teacher_pass(teacher, todo, cache, report, cfg, judge, n=1, desc="teacher"):
    """todo: (key, request, context). Asks the teacher for n samples per request not yet in the
    cache, batch by batch, and caches judge(samples, context). A batch that fails is retried one
    request at a time; a request that still fails is counted and left uncached (a rerun retries)."""
    gen = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
               top_p=getattr(cfg, "top_p", 1.0), n=n)
    for s in tqdm(range(0, len(todo), cfg.batch_size), desc=desc, disable=None):
        need = [t for t in todo[s:s + cfg.batch_size] if cache.get(t[0]) is None]
        if not need:
            continue
        try:
            outs = teacher.generate([t[1] for t in need], seed=cfg.seed + s, **gen)
        except Exception:
            outs = []
            for t in need:
                try:
                    outs += teacher.generate([t[1]], seed=cfg.seed + s, **gen)
                except Exception as e:
                    report.count("teacher_error")
                    report.sections.setdefault("teacher_errors", []).append({"error": repr(e)[:200]})
                    outs.append(None)
        for t, samples in zip(need, outs):
            if samples is not None:
                cache.put(t[0], judge(samples, t[2]))


def _user_request(record, prompt):
    """The teacher sees the record's images, then the prompt (Qwen order: image first)."""
    images = list(record.get("images") or [])
    return {"messages": [{"role": "user", "content": "<image>" * len(images) + prompt}], "images": images}


# --------------------------------------------------------------------------------------------
# 1. Instruction augmentation (sources.INSTRUCTIONS templates)


@dataclass
class AugmentConfig:
    seed: int = 0
    max_short_answer_words: int = 10  # ours: longer answers are descriptions; a "single word or
    # phrase" instruction would contradict them, so such records are left as they are


def augment_records(records, cfg, report):
    """Re-render each single-exchange record's user turn with sources.py's instruction templates
    (INSTRUCTIONS, picked per record by sources.to_sharegpt(augment=True))."""
    import sources
    out = []
    for r in tqdm(records, desc="augment", disable=None):
        src, msgs = source_of(r), r["messages"]
        system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
        turns = msgs[1:] if system is not None else msgs
        if [m["role"] for m in turns] != ["user", "assistant"]:
            report.count("kept:not_single_exchange", src), out.append(r)
            continue
        text, answer = strip_image_tags(turns[0]["content"]), turns[1]["content"]
        stem, options = bare_question(text)
        caption = template_question(text, sources.INSTRUCTIONS["caption"]) is not None
        if options is None and not caption and len(answer.split()) > cfg.max_short_answer_words:
            report.count("kept:long_answer", src), out.append(r)
            continue
        # the template is picked from the seed and this key: the record's id, else its text and
        # image file names, never the folder the images sit in (same data, same pick anywhere)
        key = r.get("id") or record_key(r["messages"], [os.path.basename(str(p)) for p in r.get("images") or []])
        rec = {"id": key, "question": stem, "answer": answer, "options": options,
               "images": r.get("images") or [], "meta": {"task": "caption"} if caption else {}}
        new = sources.to_sharegpt(rec, augment=True, seed=cfg.seed, system=system)
        out.append({**r, **new})
        report.count("augmented:" + sources.answer_form(rec), src)
    return out


# --------------------------------------------------------------------------------------------
# 2. Response enhancement: CoT rationales with rejection sampling (parse_options, which splits
# a multiple-choice question, lives in decontaminate.py: decontamination compares bare questions)


def parse_gold(answer, options):
    """The gold letter of a short answer: "B", "(B)", "B. text", "B: text" or an option's text."""
    a = answer.strip()
    m = re.fullmatch(r"\(?([A-Z])\)?(?:\s*[.:)]\s*.*)?", a, re.S)
    if m and m.group(1) in options:
        return m.group(1)
    hits = [k for k, v in options.items() if normalize_question(v) == normalize_question(a)]
    return hits[0] if len(hits) == 1 else None


def accept_rationale(text, options, gold, min_reasoning_chars=1):
    """Rejection-sampling test: exactly one `<answer>X</answer>`, at the
    very end, X an upper-case option letter equal to gold, non-empty reasoning before it.
    Returns (ok, reason). The tag must be exact because the kept text becomes a training target
    that teaches the format the prompt asks for."""
    if not isinstance(text, str) or not text.strip():
        return False, "empty"
    t = text.strip()
    n_open = len(re.findall(r"<answer>", t, re.I))
    n_close = len(re.findall(r"</answer>", t, re.I))
    if n_open == 0 and n_close == 0:
        return False, "no_answer_tag"
    if n_open != 1 or n_close != 1:
        return False, "several_answer_tags" if max(n_open, n_close) > 1 else "unbalanced_tag"
    m = re.search(r"<answer>(.*?)</answer>", t, re.S)
    if m is None:
        return False, "malformed_tag"  # upper-case tag or closing tag first
    if t[m.end():].strip():
        return False, "text_after_answer"
    letter = m.group(1)
    if not re.fullmatch(r"[A-Z]", letter):
        return False, "not_a_letter"  # lower case, spaces, "B. text", empty
    if letter not in options:
        return False, "letter_not_in_options"
    if letter != gold:
        return False, "wrong_letter"
    reasoning = t[:m.start()].strip()
    if len(reasoning) < max(1, min_reasoning_chars) or not re.search(r"\w", reasoning):
        return False, "empty_reasoning"
    return True, "ok"


@dataclass
class CotConfig:
    teacher: str = ""            # checkpoint dir of the teacher model
    backend: str = "native"      # native | vllm (evaluate.py backends)
    k: int = 4                   # samples per question; common practice is 4-8
    temperature: float = 0.8     # common practice is 0.7-1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0
    batch_size: int = 16
    min_reasoning_chars: int = 1


def enhance_responses(records, teacher, cfg, report, cache=None):
    """Multiple-choice records get the first accepted rationale of k teacher samples as their
    answer, and the appendix A prompt as their question, so the target (a rationale) is what the
    user turn asks for; the rest keep their short answer. Everything is counted per source."""
    cache = cache or JsonlCache(None)
    salt = (COT_PROMPT, cfg.teacher, cfg.k, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed)
    out, todo = list(records), []
    for i, r in enumerate(records):
        src, u, a = source_of(r), turn_index(r, "user"), turn_index(r, "assistant", last=True)
        stem, options = parse_options(r["messages"][u]["content"]) if u is not None and a is not None else ("", None)
        gold = parse_gold(r["messages"][a]["content"], options) if options else None
        if gold is None:
            report.count("kept:not_multiple_choice" if options is None else "kept:gold_not_parsed", src)
            continue
        question = stem + "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
        todo.append((record_key(r, *salt), _user_request(r, COT_PROMPT.replace("{QUESTION}", question)), (options, gold, i)))

    def judge(samples, ctx):
        verdicts = [accept_rationale(x, ctx[0], ctx[1], cfg.min_reasoning_chars) for x in samples]
        chosen = next((x.strip() for x, (ok, _) in zip(samples, verdicts) if ok), None)
        return {"text": chosen, "reasons": [why for _, why in verdicts]}
    teacher_pass(teacher, todo, cache, report, cfg, judge, n=cfg.k, desc="cot")
    for key, request, (_, _, i) in todo:
        src, hit = source_of(records[i]), cache.get(key)
        report.count("multiple_choice", src)
        for why in (hit or {}).get("reasons", []):
            report.count(f"sample:{why}", src)
        if hit is None or hit["text"] is None:
            report.count("kept:teacher_error" if hit is None else "kept:no_accepted_rationale", src)
            continue
        r = out[i] = json.loads(json.dumps(records[i]))
        r["messages"][turn_index(r, "user")]["content"] = request["messages"][0]["content"]
        r["messages"][turn_index(r, "assistant", last=True)]["content"] = hit["text"]
        report.count("enhanced", src)
    report.sections["acceptance_rate"] = {
        s: round(c["enhanced"] / c["multiple_choice"], 4) for s, c in sorted(report.by_source.items())
        if c["multiple_choice"]}
    return out


# --------------------------------------------------------------------------------------------
# 3. Caption refinement

_REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i cannot|i can'?t|i'?m unable|i am unable|"
                      r"as an ai|cannot assist|unable to (provide|help|assist))\b", re.I)


@dataclass
class CaptionConfig:
    teacher: str = ""
    backend: str = "native"
    temperature: float = 0.0
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = 16
    min_words: int = 5          # ours: shorter outputs carry no visual detail
    max_words: int = 300        # ours: the prompt asks for a concise caption
    max_repeated_ngrams: float = 0.2  # ours: share of repeated word 4-grams (looping generations)


def repeated_ngram_share(text, n=4):
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def check_caption(text, cfg):
    """(ok, reason) for a refined caption."""
    if text is None or not text.strip():
        return False, "empty"
    words = text.split()
    if _REFUSAL.search(text):
        return False, "refusal"
    if len(words) < cfg.min_words:
        return False, "too_short"
    if len(words) > cfg.max_words:
        return False, "too_long"
    if repeated_ngram_share(text) > cfg.max_repeated_ngrams:
        return False, "repeated"
    return True, "ok"


def refine_captions(records, teacher, cfg, report, cache=None):
    """The last assistant turn (the caption) is rewritten by the teacher with the appendix A
    prompt; an output failing check_caption leaves the original caption, counted by reason."""
    cache = cache or JsonlCache(None)
    salt = (CAPTION_PROMPT, cfg.teacher, cfg.temperature, cfg.max_new_tokens, cfg.seed)
    out, todo = list(records), []
    for i, r in enumerate(records):
        a = turn_index(r, "assistant", last=True)
        if a is None or not r["messages"][a]["content"].strip():
            report.count("kept:no_caption", source_of(r))
            continue
        prompt = CAPTION_PROMPT.replace("{ORIGINAL CAPTION}", r["messages"][a]["content"].strip())
        todo.append((record_key(r, *salt), _user_request(r, prompt), (i, a)))
    teacher_pass(teacher, todo, cache, report, cfg, lambda samples, _: {"text": samples[0]}, desc="caption")
    for key, _, (i, a) in todo:
        src, hit = source_of(records[i]), cache.get(key)
        report.count("captions", src)
        ok, why = check_caption(hit["text"], cfg) if hit else (False, "teacher_error")
        if not ok:
            report.count(f"kept:{why}", src)
            continue
        out[i] = json.loads(json.dumps(records[i]))
        out[i]["messages"][a]["content"] = hit["text"].strip()
        report.count("refined", src)
    return out


# --------------------------------------------------------------------------------------------
# 4. Perplexity filtering


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
    model: str = ""                  # scorer checkpoint dir (paper: Qwen2.5-VL-3B-Instruct)
    dtype: str = "float32"           # weights; logits and cross-entropy are always fp32
    device: str = "cpu"
    batch_size: int = 8
    max_ppl: float | None = None     # keep ppl <= this ...
    keep_percentile: float | None = None  # ... and/or the lowest p% within each source
    scorer: str = "infimed"          # infimed: our model, batched | vllm: vLLM prompt log-probs
    min_caption_tokens: int = 8      # ours: shorter captions have noisy perplexity
    max_len: int = 4096              # paper: max sequence 4096
    max_pixels: int = 262144         # paper: at most 262,144 pixels per image


def score_records(records, model, tokenizer, processor, cfg, report, cache=None):
    """Per record: {"ppl", "n"} or {"error"}. Records are encoded a window at a time (bounded
    memory), sorted by length within the window and scored in right-padded batches."""
    from data import SampleError, collate, encode
    cache = cache or JsonlCache(None)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end
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
    """Keep flags: ppl <= max_ppl and/or ppl <= the keep_percentile-th percentile of its source.
    Records without a score (no image, unreadable) are kept and counted; too short are dropped."""
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
            ok = res["error"] != "too_short"
            report.count(("kept:" if ok else "dropped:") + res["error"].split(":")[0], src)
        else:
            ok = (cfg.max_ppl is None or res["ppl"] <= cfg.max_ppl) and res["ppl"] <= cut.get(src, math.inf)
            report.count("kept" if ok else "dropped:perplexity", src)
        keep.append(ok)
    report.sections["cutoffs"] = {s: round(c, 4) for s, c in sorted(cut.items())}
    report.sections["histogram"] = text_histogram([p for v in by_src.values() for p in v])
    return keep


# --------------------------------------------------------------------------------------------
# Steps over files, and the command line


def run_step(step, in_path, out_path, cfg, teacher=None, model=None, embedder=None):
    """Read IN, run one step, write OUT (+ OUT.report.json/.md, OUT.dropped.jsonl)."""
    if step == "decontaminate":
        return decontaminate.run_step(in_path, out_path, cfg, embedder)
    if step not in CONFIGS:
        raise click.UsageError(f"unknown step {step!r}; steps: {', '.join(CONFIGS)}")
    need = {"cot": "teacher", "caption": "teacher", "perplexity": "model"}.get(step)
    if need and not getattr(cfg, need) and teacher is None and model is None:
        raise click.UsageError(f"{step} needs --{need} DIR (a checkpoint directory)")
    stem = os.path.splitext(out_path)[0]
    records, report = read_step_input(step, in_path, cfg)
    keep = [True] * len(records)
    if step == "augment":
        records = augment_records(records, cfg, report)
    elif step in ("cot", "caption"):
        import evaluate  # native (infimed) or vLLM; both answer .generate(requests, ..., n=k)
        teacher = teacher or evaluate.make_backend(cfg.backend, cfg.teacher)
        fn = enhance_responses if step == "cot" else refine_captions
        records = fn(records, teacher, cfg, report, JsonlCache(stem + ".cache.jsonl"))
    else:
        from data import ImageProcessor, load_tokenizer
        cache = JsonlCache(stem + ".cache.jsonl")
        if cfg.scorer == "vllm":
            import evaluate
            backend = evaluate.make_backend("vllm", cfg.model, dtype=cfg.dtype, max_pixels=cfg.max_pixels)
            results = score_with_prompt_logprobs(records, backend, load_tokenizer(cfg.model), cfg, report, cache)
        else:
            model, tok = model or load_model(cfg.model, cfg.dtype, cfg.device)
            results = score_records(records, model, tok, ImageProcessor(max_pixels=cfg.max_pixels), cfg, report, cache)
        keep = select_by_perplexity(records, results, cfg, report)
        with open(stem + ".scores.jsonl", "w") as f:
            for i, (r, res, k) in enumerate(zip(records, results, keep)):
                f.write(json.dumps({"index": i, "id": record_name(r, i), "source": source_of(r), **res, "kept": k}) + "\n")
    return write_step_output(records, keep, out_path, report)


CONFIGS = {"augment": AugmentConfig, "cot": CotConfig, "caption": CaptionConfig,
           "perplexity": PerplexityConfig, "decontaminate": DecontamConfig}


def config_from(step, options):
    cls = CONFIGS[step]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - names
    if unknown:
        raise click.UsageError(f"{step}: unknown settings {sorted(unknown)}; known: {sorted(names)}")
    return cls(**options)


def run_pipeline(spec_path):
    """Runs {"steps": [{"step": NAME, "in": IN, "out": OUT, ...settings}]} in order; a step
    without "in" reads the previous step's "out"."""
    with open(spec_path) as f:
        spec = json.load(f)
    prev, reports = None, []
    for n, s in enumerate(spec["steps"]):
        s = dict(s)
        step, out = s.pop("step"), s.pop("out")
        in_path = s.pop("in", prev)
        if in_path is None:
            raise click.UsageError(f"{spec_path}: step {n} ({step}) has no \"in\" and no previous step")
        reports.append(run_step(step, in_path, out, config_from(step, s)))
        prev = out
    return reports


@click.group()
def cli():
    """Curation steps over ShareGPT JSONL files; each writes OUT and OUT.report.{json,md}."""


def _add_command(step):
    def command(in_path, out_path, **options):
        report = run_step(step, in_path, out_path, config_from(step, options))
        click.echo(json.dumps(dict(report.counts), indent=1))
    cli.command(step, help=f"Run the {step} step on IN_PATH, writing OUT_PATH.")(config_command(CONFIGS[step])(command))


for _step in CONFIGS:
    _add_command(_step)


@cli.command("pipeline")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
def pipeline_cmd(spec):
    """Run the steps of a JSON spec in order."""
    for r in run_pipeline(spec):
        click.echo(f"{r.step}: {json.dumps(dict(r.counts))}")


if __name__ == "__main__":
    cli()
