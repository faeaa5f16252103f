"""Data curation for Infi-Med SFT data (paper section 3 and appendix A): the steps, and the
record helpers, reports and step files every step shares.

Every step reads and writes ShareGPT JSONL and leaves a sidecar report (OUT.report.json and
OUT.report.md, a tally.Tally) saying what it kept, changed or dropped and why, with records in and
out per source. Steps are resumable: per-record results live in OUT.cache.jsonl (or OUT.cache/ for
embeddings) keyed by a hash of the record and the step's settings, so a rerun only computes what
is missing. Each step touches only the records it is for (captions for caption refinement and
perplexity, multiple choice for chain of thought) and passes the rest, counted. A step that
rewrites a prompt first stores the record's original question and options (remember_original),
which decontamination compares. The two steps that score records with a model live in files of
their own, built on this one: perplexity.py and decontaminate.py (which also runs alone).

    python curate.py cot           IN.jsonl OUT.jsonl --teacher DIR --k 4 --temperature 0.8 \
                                   [--sample 5000 --cap 3000 --accepted-only --verifier DIR]
    python curate.py merge         IN.jsonl OUT.jsonl --add LABEL=GENERATED.jsonl
    python curate.py caption       IN.jsonl OUT.jsonl --teacher DIR
    python curate.py augment       IN.jsonl OUT.jsonl
    python curate.py perplexity    IN.jsonl OUT.jsonl --model DIR --keep-percentile 90
    python curate.py decontaminate IN.jsonl OUT.jsonl --bench test.jsonl --embedder DIR|hash
    python curate.py pipeline      SPEC.json   # {"steps": [{"step": "cot", "in": ..., ...}, ...]}
    python curate.py STEP --help   # every setting of a step

The README's "Running the real recipe" gives the order from raw downloads to the training file.
"""
import dataclasses
import hashlib
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass

import click
import torch
from tqdm import tqdm

from answers import parse_choice
from cli import command_options, setting
from data import load_tokenizer, read_sharegpt, write_sharegpt
from prompts import (CAPTION_PROMPT, COT_PROMPT, INSTRUCTIONS, VERIFY_PROMPT, cot_prompt, format_options,
                     normalize_question, parse_gold, split_options)
from tally import Tally

# --------------------------------------------------------------------------------------------
# Records: keys, names, turns


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
# Step files: read IN, mark OUT unfinished until done, write OUT and its report


def begin_step(step, out_path):
    """Mark OUT's report incomplete until the step writes its real one: a step killed midway
    leaves a report that says so, and the next step refuses OUT (read_step_input)."""
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    with open(os.path.splitext(out_path)[0] + ".report.json", "w") as f:
        json.dump({"step": step, "complete": False}, f)


def read_step_input(step, in_path, cfg):
    """(records, report) for a step over IN. The report, a Tally named after the step, starts
    with the step's settings and the records data.read_sharegpt could not use, counted as
    "dropped:invalid_record:REASON" with one example message (file and line) per reason. IN is
    refused when its own report says the step that wrote it did not finish."""
    side = os.path.splitext(in_path)[0] + ".report.json"
    if os.path.exists(side):
        try:
            done = json.load(open(side)).get("complete", True)
        except (json.JSONDecodeError, AttributeError):
            done = False
        if not done:
            raise click.UsageError(f"{in_path}: its report {side} says the step that writes it did not finish; "
                                   "rerun that step (it resumes from its cache) before this one")
    records, read = read_sharegpt(in_path)
    report = Tally(step)
    report.sections["config"] = dataclasses.asdict(cfg)
    report.sections["input"] = {"path": in_path, "records": len(records),
                                "unreadable_lines": sum(read.counts.values())}
    for r in records:
        report.count("in", source_of(r))
    report.add(read, prefix="dropped:invalid_record:")
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
    report.count("output_records", n=sum(keep))
    stem = os.path.splitext(out_path)[0]
    with open(stem + ".report.json", "w") as f:
        json.dump({"step": report.name, "complete": True, **report.to_dict()}, f, indent=1, ensure_ascii=False,
                  default=str)
    with open(stem + ".report.md", "w") as f:
        f.write(f"# {report.name}: {out_path}\n\n{report.markdown()}\n")
    return report


def load_model(path, dtype, device):
    """(model in eval mode, tokenizer) of a checkpoint dir, for the steps that score records."""
    from infimed import QwenVL
    model = QwenVL.from_pretrained(path, dtype=getattr(torch, dtype), device=device).eval()
    return model, load_tokenizer(path)


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
    seed: int = setting(0, "with the record's id, picks its instruction template")
    # ours: longer answers are descriptions, which a "single word or phrase" instruction would
    # contradict, so such records are left as they are
    max_short_answer_words: int = setting(10, "ours: an open answer longer than this keeps its prompt")


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


def consistent_rationale(text, options, gold, question=None):
    """The paper keeps "logically consistent" explanations (section 3.1): the reasoning before
    the answer tag must not itself commit to another option. answers.parse_choice reads the body
    as it would a model's answer, with the question (so that 'D is not a tumor suppressor gene'
    commits to D where the question asks which one is not); a body that concludes nothing (it
    weighs every option) passes."""
    return parse_choice(_body(text), options, question) in (None, gold)


# The criteria in the order they are checked; a sample is accepted when it passes all of them.
FORMAT_FAILURES = ("empty", "no_answer_tag", "several_answer_tags", "unbalanced_tag", "malformed_tag",
                   "text_after_answer", "not_a_letter", "empty_reasoning")
CRITERIA = ("format", "letter", "consistency", "verifier")


@dataclass
class CotConfig:
    teacher: str = setting("", "checkpoint dir of the teacher model")
    backend: str = setting("native", "native | vllm (evaluate.py backends)")
    k: int = setting(4, "samples per question; common practice is 4-8")
    temperature: float = setting(0.8, "sampling temperature; common practice is 0.7-1.0")
    top_p: float = setting(1.0, "nucleus sampling: the smallest set of tokens holding this probability")
    max_new_tokens: int = setting(1024, "token budget of each rationale")
    seed: int = setting(0, "sampling seed, and the --sample draw")
    batch_size: int = setting(16, "questions per teacher call")
    min_reasoning_chars: int = setting(1, "the shortest reasoning accepted before the answer tag")
    sample: int = setting(0, "draw this many multiple-choice records at random (0 = all of them)")
    cap: int = setting(0, "stop once this many records are enhanced (0 = no cap; paper: ~3k)")
    accepted_only: bool = setting(False, "write only the enhanced records: the paper's separate reasoning set")
    verifier: str = setting("", "optional checkpoint dir asked whether each explanation is faithful")
    verifier_backend: str = setting("", "native | vllm, for --verifier (default: --backend)")


def rule_verdict(text, options, gold, cfg, question=None):
    """(criterion that failed or None, reason) under the rule-based criteria."""
    ok, why = accept_rationale(text, options, gold, cfg.min_reasoning_chars)
    if not ok:
        return ("format" if why in FORMAT_FAILURES else "letter"), why
    if not consistent_rationale(text, options, gold, question):
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
                     (options, gold, i, question, stem)))
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
        verdicts = {key: [(x, *rule_verdict(x, options, gold, cfg, stem)) for x in cache.get(key)["samples"]]
                    for key, _, (options, gold, _, _, stem) in part if cache.get(key) is not None}
        if verifier is not None:  # only samples that pass the rules are shown to the verifier
            # the verifier sees the reasoning without its tag and is asked about the letter apart
            verify_pass(verifier, [(record_key("verify", cfg.verifier, key, x), _user_request(
                records[i], VERIFY_PROMPT.format(QUESTION=question, RATIONALE=_body(x), LETTER=gold)))
                for key, _, (_, gold, i, question, _) in part for x, failed, _ in verdicts.get(key, [])
                if failed is None], cache, report, cfg)
        for key, request, (options, gold, i, question, _) in part:
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
    teacher: str = setting("", "checkpoint dir of the model that rewrites the captions")
    backend: str = setting("native", "native | vllm (evaluate.py backends)")
    temperature: float = setting(0.0, "sampling temperature; 0 = greedy")
    max_new_tokens: int = setting(512, "token budget of each rewrite")
    seed: int = setting(0, "sampling seed")
    batch_size: int = setting(16, "captions per teacher call")
    min_words: int = setting(5, "ours: shorter outputs carry no visual detail")
    max_words: int = setting(300, "ours: the prompt asks for a concise caption")
    max_repeated_ngrams: float = setting(0.2, "ours: share of repeated word 4-grams (looping generations)")


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
# 4. Merging a generated set into the mix


@dataclass
class MergeConfig:
    add: list = setting([], "LABEL=PATH: a ShareGPT file joining as source LABEL (repeatable)")
    seed: int = setting(0, "the merged records are shuffled with this seed")


def merge_records(records, cfg, report):
    """IN's records plus every --add file's, relabelled, shuffled deterministically."""
    out = list(records)
    for spec in cfg.add:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise click.UsageError(f"--add {spec!r}: expected LABEL=PATH, e.g. "
                                   "pmc_vqa_reasoning=sft/pmc_vqa_reasoning.jsonl")
        added, read = read_sharegpt(path)
        report.add(read, prefix="dropped:invalid_record:", source=label)
        report.sections.setdefault("added", {})[label] = f"{len(added)} records from {path}"
        report.count("in", label, len(added))
        out += [{**r, "source": label} for r in added]
    random.Random(cfg.seed).shuffle(out)
    return out


# --------------------------------------------------------------------------------------------
# Steps over files, and the command line


def run_step(step, in_path, out_path, cfg, model=None, embedder=None):
    """Read IN, run one step, write OUT (+ OUT.report.json/.md, OUT.dropped.jsonl)."""
    if step == "decontaminate":  # a file of its own that imports this one: imported here (see config_class)
        import decontaminate
        return decontaminate.run_step(in_path, out_path, cfg, embedder)
    if step not in STEPS:
        raise click.UsageError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    need = {"cot": "teacher", "caption": "teacher", "perplexity": "model"}.get(step)
    if need and not getattr(cfg, need) and model is None:
        raise click.UsageError(f"{step} needs --{need} DIR (a checkpoint directory)")
    stem = os.path.splitext(out_path)[0]
    records, report = read_step_input(step, in_path, cfg)
    begin_step(step, out_path)
    keep = None  # every record, unless a filter says otherwise
    if step == "augment":
        records = augment_records(records, cfg, report)
    elif step == "merge":
        records = merge_records(records, cfg, report)
    elif step in ("cot", "caption"):
        import evaluate  # native (infimed) or vLLM; both answer .generate(requests, ..., n=k)
        checker = (cfg.verifier_backend or cfg.backend, cfg.verifier) if step == "cot" else ("native", "")
        teacher, verifier = evaluate.make_backends([(cfg.backend, cfg.teacher), checker])  # shared if the same
        cache = JsonlCache(stem + ".cache.jsonl")
        if step == "caption":
            records = refine_captions(records, teacher, cfg, report, cache)
        else:
            records = enhance_responses(records, teacher, cfg, report, cache, verifier)
    else:
        import perplexity  # as decontaminate.py
        keep = perplexity.perplexity_step(records, cfg, report, stem, model)
    return write_step_output(records, [True] * len(records) if keep is None else keep, out_path, report)


STEPS = ("augment", "cot", "caption", "perplexity", "merge", "decontaminate")


def config_class(step):
    """The settings dataclass of a step. perplexity.py and decontaminate.py hold their own and
    import this file, so they are imported when their step is asked for: at the top of this file
    they would make an import cycle."""
    if step == "perplexity":
        from perplexity import PerplexityConfig
        return PerplexityConfig
    if step == "decontaminate":
        from decontaminate import DecontamConfig
        return DecontamConfig
    return {"augment": AugmentConfig, "cot": CotConfig, "caption": CaptionConfig, "merge": MergeConfig}[step]


def config_from(step, options):
    """A step's settings from a pipeline spec's entries; unknown names are refused."""
    if step not in STEPS:
        raise click.UsageError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    cls = config_class(step)
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


def step_command(step):
    """The command line of one step: IN_PATH OUT_PATH and one option per setting."""
    def command(in_path, out_path, **settings):
        report = run_step(step, in_path, out_path, config_from(step, settings))
        click.echo(json.dumps(dict(report.counts), indent=1))
    command = command_options(config_class(step))(command)
    command = click.argument("out_path", type=click.Path(dir_okay=False))(command)
    command = click.argument("in_path", type=click.Path(exists=True, dir_okay=False))(command)
    return click.command(step, help=f"Run the {step} step on IN_PATH, writing OUT_PATH.")(command)


def _cli():
    """The command group, built when called (config_class imports the steps in other files)."""
    @click.group()
    def cli():
        """Curation steps over ShareGPT JSONL files; each writes OUT and OUT.report.{json,md}."""

    for step in STEPS:
        cli.add_command(step_command(step))

    @cli.command("pipeline")
    @click.argument("spec", type=click.Path(exists=True, dir_okay=False))
    def pipeline_cmd(spec):
        """Run the steps of a JSON spec in order."""
        for r in run_pipeline(spec):
            click.echo(f"{r.name}: {json.dumps(dict(r.counts))}")
    return cli


if __name__ == "__main__":
    _cli()()
