"""Data curation for Infi-Med SFT data (paper section 3 and appendix A).

Every step reads and writes ShareGPT JSONL and leaves a sidecar report (OUT.report.json and
OUT.report.md) saying what it kept, changed or dropped and why, with records in and out per
source. Steps are resumable: per-record results live in OUT.cache.jsonl (or OUT.cache/ for
embeddings) keyed by a hash of the record and the step's settings, so a rerun only computes what
is missing. Each step touches only the records it is for (captions for caption refinement and
perplexity, multiple choice for chain of thought) and passes the rest, counted. A step that
rewrites a prompt first stores the record's original question and options (remember_original),
which decontamination compares. Decontamination lives in decontaminate.py (self-contained, also
runnable alone); its record helpers, report and step files serve every step here.

    python curate.py cot           IN.jsonl OUT.jsonl --teacher DIR --k 4 --temperature 0.8 \
                                   [--sample 5000 --cap 3000 --accepted-only --verifier DIR]
    python curate.py merge         IN.jsonl OUT.jsonl --add LABEL=GENERATED.jsonl
    python curate.py caption       IN.jsonl OUT.jsonl --teacher DIR
    python curate.py augment       IN.jsonl OUT.jsonl
    python curate.py perplexity    IN.jsonl OUT.jsonl --model DIR --keep-percentile 90
    python curate.py decontaminate IN.jsonl OUT.jsonl --bench test.jsonl --embedder DIR|hash
    python curate.py pipeline      SPEC.json   # {"steps": [{"step": "cot", "in": ..., ...}, ...]}

The README's "Running the real recipe" gives the order from raw downloads to the training file.
"""
import dataclasses
import json
import math
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import click
import torch
import torch.nn.functional as F
from tqdm import tqdm

import decontaminate
from answers import parse_choice
from decontaminate import (DecontamConfig, bare_question, config_command, load_model,
                           parse_options, read_step_input, record_key, record_name, remember_original, source_of,
                           strip_image_tags, turn_index, write_step_output)
from prompts import (CAPTION_PROMPT, COT_PROMPT, INSTRUCTIONS, VERIFY_PROMPT, cot_prompt, format_options,
                     normalize_question, parse_gold)

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


def teacher_pass(teacher, todo, cache, report, cfg, judge, n=1, desc="teacher", error="teacher_error"):
    """todo: (key, request, context). Asks the teacher for n samples per request not yet in the
    cache, batch by batch, and caches judge(samples, context). A batch that fails is retried one
    request at a time; a request that still fails is counted (`error`) and left uncached (a rerun
    retries)."""
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
                    report.count(error)
                    report.sections.setdefault(error + "s", []).append({"error": repr(e)[:200]})
                    outs.append(None)
        for t, samples in zip(need, outs):
            if samples is not None:
                cache.put(t[0], judge(samples, t[2]))


def _user_request(record, prompt):
    """The teacher sees the record's images, then the prompt (Qwen order: image first)."""
    images = list(record.get("images") or [])
    return {"messages": [{"role": "user", "content": "<image>" * len(images) + prompt}], "images": images}


# --------------------------------------------------------------------------------------------
# Which records a step applies to


def is_caption(record):
    """An image-caption record: the mix marks them (task "caption"); otherwise a user turn that is
    one of the caption instructions (INSTRUCTIONS["caption"]) with a single answer."""
    if record.get("task") == "caption":
        return True
    u = turn_index(record, "user")
    roles = [m["role"] for m in record.get("messages", []) if m["role"] != "system"]
    return (roles == ["user", "assistant"]
            and strip_image_tags(record["messages"][u]["content"]) in INSTRUCTIONS["caption"])


# --------------------------------------------------------------------------------------------
# 1. Instruction augmentation (INSTRUCTIONS templates)


@dataclass
class AugmentConfig:
    seed: int = 0
    max_short_answer_words: int = 10  # ours: longer answers are descriptions; a "single word or
    # phrase" instruction would contradict them, so such records are left as they are


def augment_records(records, cfg, report):
    """Re-render each single-exchange record's user turn with sources.py's instruction templates
    (INSTRUCTIONS, picked per record by sources.to_sharegpt(augment=True)). The instruction must
    fit the target: a multiple-choice record whose answer is not a bare option letter (a
    rationale ending in <answer>X</answer>, an option's text) keeps its prompt, since "answer with
    the option's letter directly" would contradict what it is trained to write."""
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
        caption = is_caption(r)
        if options is not None and answer.strip() not in options:
            report.count("kept:target_not_a_letter", src), out.append(r)
            continue
        if options is None and not caption and len(answer.split()) > cfg.max_short_answer_words:
            report.count("kept:long_answer", src), out.append(r)
            continue
        # the template is picked from the seed and this key: the record's id, else its text and
        # image file names, never the folder the images sit in (same data, same pick anywhere)
        key = r.get("id") or record_key(r["messages"], [os.path.basename(str(p)) for p in r.get("images") or []])
        rec = {"id": key, "question": stem, "answer": answer.strip(), "options": options,
               "images": r.get("images") or [], "meta": {"task": "caption"} if caption else {}}
        new = sources.to_sharegpt(rec, augment=True, seed=cfg.seed, system=system)
        out.append({**remember_original(dict(r)), **new})
        report.count("augmented:" + sources.answer_form(rec), src)
    return out


# --------------------------------------------------------------------------------------------
# 2. Response enhancement: CoT rationales with rejection sampling


def accept_rationale(text, options, gold, min_reasoning_chars=1):
    """Rejection-sampling test of the format and the final letter: exactly one
    `<answer>X</answer>`, at the very end, X an upper-case option letter equal to gold, non-empty
    reasoning before it. Returns (ok, reason). The tag must be exact because the kept text becomes
    a training target that teaches the format the prompt asks for."""
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


def _body(text):
    """A rationale without its answer tag."""
    return re.sub(r"<answer>.*?</answer>", " ", text, flags=re.S | re.I).strip()


def consistent_rationale(text, options, gold):
    """The paper keeps "logically consistent" explanations (section 3.1): the reasoning before
    the answer tag must not itself commit to another option. answers.parse_choice reads the body
    as it would a model's answer; a body that concludes nothing (it weighs every option) passes."""
    return parse_choice(_body(text), options) in (None, gold)


# The criteria in the order they are checked; a sample is accepted when it passes all of them.
FORMAT_FAILURES = ("empty", "no_answer_tag", "several_answer_tags", "unbalanced_tag", "malformed_tag",
                   "text_after_answer", "not_a_letter", "empty_reasoning")
CRITERIA = ("format", "letter", "consistency", "verifier")


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
    sample: int = 0              # draw this many multiple-choice records at random (0 = all of them)
    cap: int = 0                 # stop once this many records are enhanced (0 = no cap; paper: ~3k)
    accepted_only: bool = False  # write only the enhanced records: the paper's separate reasoning set
    verifier: str = ""           # optional checkpoint dir asked whether each explanation is faithful
    verifier_backend: str = "native"


def rule_verdict(text, options, gold, cfg):
    """(criterion that failed or None, reason) under the rule-based criteria."""
    ok, why = accept_rationale(text, options, gold, cfg.min_reasoning_chars)
    if not ok:
        return ("format" if why in FORMAT_FAILURES else "letter"), why
    if not consistent_rationale(text, options, gold):
        return "consistency", "commits_to_another_option"
    return None, "ok"


def verify_pass(verifier, todo, cache, report, cfg):
    """todo: (key, request). Asks the verifier (greedy, a few tokens) through teacher_pass and
    caches whether it said yes."""
    greedy = dataclasses.replace(cfg, max_new_tokens=8, temperature=0.0, top_p=1.0)
    teacher_pass(verifier, [t + (None,) for t in todo], cache, report, greedy, desc="verify", error="verifier_error",
                 judge=lambda samples, _: {"yes": normalize_question(samples[0]).split()[:1] == ["yes"],
                                           "text": samples[0]})


def _tally(passed, failed):
    """Count one sample against each rule criterion it reached (those before `failed` it passed)."""
    for c in CRITERIA[:3]:
        passed[c]["in"] += 1
        if c == failed:
            return
        passed[c]["ok"] += 1


def enhance_responses(records, teacher, cfg, report, cache=None, verifier=None):
    """Multiple-choice records get the first accepted of k teacher rationales as their answer,
    and the appendix A prompt as their question, so the target (a rationale) is what the user
    turn asks for. A sample is accepted when it passes every criterion, in order: format (one
    final <answer>X</answer> after some reasoning), letter (X is the gold option), consistency
    (consistent_rationale) and, with a verifier, the verifier's yes to VERIFY_PROMPT.
    cfg.sample draws that many multiple-choice records at random (seeded); cfg.cap stops asking
    once that many are enhanced; cfg.accepted_only writes only the enhanced records (the paper's
    separate ~3k reasoning set). Everything is counted per source and per criterion."""
    cache = cache or JsonlCache(None)
    salt = ("samples-v2", COT_PROMPT, cfg.teacher, cfg.k, cfg.temperature, cfg.top_p, cfg.max_new_tokens,
            cfg.seed)
    fate = "dropped" if cfg.accepted_only else "kept"  # what happens to a record that is not enhanced
    todo = []
    for i, r in enumerate(records):
        src, u, a = source_of(r), turn_index(r, "user"), turn_index(r, "assistant", last=True)
        stem, options = parse_options(r["messages"][u]["content"]) if u is not None and a is not None else ("", None)
        gold = parse_gold(r["messages"][a]["content"], options) if options else None
        if gold is None:
            report.count(f"{fate}:not_multiple_choice" if options is None else f"{fate}:gold_not_parsed", src)
            continue
        question = stem + "\n" + format_options(options)
        todo.append((record_key(r, *salt), _user_request(r, cot_prompt(stem, options)),
                     (options, gold, i, question)))
    drawn = todo
    if cfg.sample and cfg.sample < len(todo):
        drawn = random.Random(cfg.seed).sample(todo, cfg.sample)
        picked = {t[2][2] for t in drawn}
        for t in todo:
            if t[2][2] not in picked:
                report.count(f"{fate}:not_drawn", source_of(records[t[2][2]]))
    passed = {c: Counter() for c in CRITERIA}  # criterion -> {"in": samples checked, "ok": passed}
    enhanced, chunk = {}, max(cfg.batch_size, 1) * 4  # chunks, so that a cap stops the teacher early
    for c0 in range(0, len(drawn), chunk):
        part = drawn[c0:c0 + chunk]
        if cfg.cap and len(enhanced) >= cfg.cap:
            for _, _, ctx in part:
                report.count(f"{fate}:cap_reached", source_of(records[ctx[2]]))
            continue
        teacher_pass(teacher, part, cache, report, cfg, lambda samples, _: {"samples": samples}, n=cfg.k, desc="cot")
        verdicts = {key: [(x, *rule_verdict(x, options, gold, cfg)) for x in cache.get(key)["samples"]]
                    for key, _, (options, gold, _, _) in part if cache.get(key) is not None}
        if verifier is not None:  # only samples that pass the rules are shown to the verifier
            # the verifier sees the reasoning without its tag and is asked about the letter apart
            verify_pass(verifier, [(record_key("verify", cfg.verifier, key, x), _user_request(
                records[i], VERIFY_PROMPT.format(QUESTION=question, RATIONALE=_body(x), LETTER=gold)))
                for key, _, (_, gold, i, question) in part for x, failed, _ in verdicts.get(key, [])
                if failed is None], cache, report, cfg)
        for key, request, (options, gold, i, question) in part:
            src = source_of(records[i])
            report.count("multiple_choice", src)
            if key not in verdicts:
                report.count(f"{fate}:teacher_error", src)
                continue
            chosen = None
            for x, failed, why in verdicts[key]:
                _tally(passed, failed)
                if failed is None and verifier is not None:
                    v = cache.get(record_key("verify", cfg.verifier, key, x))
                    passed["verifier"]["in"] += v is not None
                    passed["verifier"]["ok"] += bool(v and v["yes"])
                    failed, why = (None, "ok") if v and v["yes"] else \
                        ("verifier", "verifier_said_no" if v else "verifier_error")
                report.count(f"sample:{why}", src)
                if failed is None and chosen is None:
                    chosen = x.strip()
            if chosen is None:
                report.count(f"{fate}:no_accepted_rationale", src)
            elif cfg.cap and len(enhanced) >= cfg.cap:
                report.count(f"{fate}:cap_reached", src)
            else:
                enhanced[i] = (request["messages"][0]["content"], chosen)
                report.count("enhanced", src)
    out = []
    for i, r in enumerate(records):
        if i in enhanced:
            r = remember_original(json.loads(json.dumps(r)))
            r["messages"][turn_index(r, "user")]["content"] = enhanced[i][0]
            r["messages"][turn_index(r, "assistant", last=True)]["content"] = enhanced[i][1]
        elif cfg.accepted_only:
            continue
        out.append(r)
    report.sections["acceptance_rate"] = {
        s: round(c["enhanced"] / c["multiple_choice"], 4) for s, c in sorted(report.by_source.items())
        if c["multiple_choice"]}
    report.sections["acceptance_by_criterion"] = {
        c: f"{n['ok']} of {n['in']} samples" for c, n in passed.items() if c != "verifier" or verifier is not None}
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
    """The caption of each image-caption record (is_caption) is rewritten by the teacher with the
    appendix A prompt; an output failing check_caption leaves the original caption, counted by
    reason. Every other record passes unchanged, counted "not_applicable"."""
    cache = cache or JsonlCache(None)
    salt = (CAPTION_PROMPT, cfg.teacher, cfg.temperature, cfg.max_new_tokens, cfg.seed)
    out, todo = list(records), []
    for i, r in enumerate(records):
        if not is_caption(r):
            report.count("not_applicable", source_of(r))
            continue
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
        out[i] = remember_original(json.loads(json.dumps(records[i])))
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
    from data import SampleError, collate, encode, pad_id
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
    from data import ImageProcessor, load_tokenizer
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


# --------------------------------------------------------------------------------------------
# 5. Merging a generated set into the mix


@dataclass
class MergeConfig:
    add: list = field(default_factory=list)  # LABEL=PATH: a ShareGPT file joining as source LABEL
    seed: int = 0  # the merged records are shuffled with this seed


def merge_records(records, cfg, report):
    """IN's records plus every --add file's, relabelled, shuffled deterministically."""
    from data import read_sharegpt
    out = list(records)
    for spec in cfg.add:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise click.UsageError(f"--add {spec!r}: expected LABEL=PATH, e.g. "
                                   "pmc_vqa_reasoning=sft/pmc_vqa_reasoning.jsonl")
        added, info = read_sharegpt(path)
        for reason, n in info["skipped"].items():
            report.count(f"dropped:invalid_record:{reason}", label, n)
        report.sections.setdefault("added", {})[label] = f"{len(added)} records from {path}"
        report.count("in", label, len(added))
        out += [{**r, "source": label} for r in added]
    random.Random(cfg.seed).shuffle(out)
    return out


# --------------------------------------------------------------------------------------------
# Steps over files, and the command line


def run_step(step, in_path, out_path, cfg, teacher=None, model=None, embedder=None, verifier=None):
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
    decontaminate.begin_step(step, out_path)
    keep = None  # every record, unless a filter says otherwise
    if step == "augment":
        records = augment_records(records, cfg, report)
    elif step == "merge":
        records = merge_records(records, cfg, report)
    elif step in ("cot", "caption"):
        import evaluate  # native (infimed) or vLLM; both answer .generate(requests, ..., n=k)
        teacher = teacher or evaluate.make_backend(cfg.backend, cfg.teacher)
        cache = JsonlCache(stem + ".cache.jsonl")
        if step == "caption":
            records = refine_captions(records, teacher, cfg, report, cache)
        else:
            if cfg.verifier and verifier is None:
                verifier = evaluate.make_backend(cfg.verifier_backend, cfg.verifier)
            records = enhance_responses(records, teacher, cfg, report, cache, verifier)
    else:
        keep = perplexity_step(records, cfg, report, stem, model)
    return write_step_output(records, [True] * len(records) if keep is None else keep, out_path, report)


CONFIGS = {"augment": AugmentConfig, "cot": CotConfig, "caption": CaptionConfig,
           "perplexity": PerplexityConfig, "merge": MergeConfig, "decontaminate": DecontamConfig}


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
