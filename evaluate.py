"""Evaluation for infimed: a checkpoint answers the paper's benchmarks, every answer is scored
and kept, and the run ends with a summary and a Table 1-shaped Markdown table.

    python evaluate.py run --model CKPT --benchmark vqa_rad --data-root DATA/VQA_RAD \
        --backend native --out runs/base [--limit 50] [--subset answer_type=CLOSED]
    python evaluate.py run --model CKPT --benchmark pmc_vqa --benchmark mmmu \
        --data-root pmc_vqa=DATA/PMC-VQA --data-root mmmu=DATA/MMMU --backend vllm \
        --out runs/base --shuffle --circular --rephrase --grounding --cot [--judge-model JUDGE]
    python evaluate.py compare runs/base runs/trained -o table.md   # Table 1 shape, side by side
    python -m pytest -q tests/test_evaluate.py

Benchmarks (sources.load_source): vqa_rad, slake, path_vqa, pmc_vqa (the clean test set),
pmc_vqa_full, pmc_vqa_open, mmmu, gmai_mmbench, synthetic. Scoring follows the scorers the paper
used: MultiMedEval's VQA scorer for VQA-RAD, SLAKE, Path-VQA and open PMC-VQA (vqa.py); option
accuracy for multiple choice (answers.py), with a parser stricter than VLMEvalKit's about chain
of thought and the article "A" that reads each answer with its question, and for MMMU and
GMAI-MMBench an optional LLM judge for the answers the rules cannot read or only infer. The
robustness variants (shuffled options, CircularEval, rephrasing) are made in robustness.py;
summaries, the analyses against the base run and the tables in summary.py. Per run directory:
<benchmark>/<variant>.jsonl (prompt, response, parsed answer, score, flags per sample),
summary.json, table.md; a killed run resumes from its JSONL files.

Reading order: configuration, benchmarks and variants, prompts, backends, scoring of one
sample, resumable runs, orchestration, CLI.
"""
import json
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass

import robustness
import summary
from answers import parse_choice_rule, response_category
from prompts import (COT_PROMPT, EVAL_PROMPTS, GROUNDING_PROMPT, JUDGE_PROMPT, cot_prompt, format_options,
                     gold_letter)
from vqa import box_iou, is_yes_no, parse_box, strip_boxes, vqa_scores, yes_no_invalid


# ---- Configuration -------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    model: str
    backend: str = "native"
    out: str = "eval_out"
    name: str = ""  # row label in tables (default: the model directory's name)
    max_new_tokens: int = 64
    cot_max_new_tokens: int = 1024  # --cot answers: as curate.CotConfig, stopping at </answer>
    temperature: float = 0.0  # greedy by default
    top_p: float = 1.0
    seed: int = 0  # sampling and option shuffles
    batch_size: int = 8
    device: str = None  # native backend: default cuda when available
    dtype: str = None  # e.g. bfloat16 (native: the checkpoint's dtype by default; vLLM: bfloat16)
    min_pixels: int = None
    max_pixels: int = 262144  # the paper's budget (section 4.1)
    limit: int = None
    subset: tuple = ()  # (key, value) filters on record fields or meta
    variants: tuple = ("base",)
    rephrase_file: str = None
    rephrase_model: str = None  # writes the rephrasings of the multiple-choice questions (else templates)
    rephrase_backend: str = None  # default: the evaluated model's backend
    judge_model: str = None
    judge_backend: str = None  # default: the evaluated model's backend

    def __post_init__(self):
        self.rephrase_backend = self.rephrase_backend or self.backend
        self.judge_backend = self.judge_backend or self.backend


# ---- Benchmarks and the variants a run asks ------------------------------------------------------
# name -> (sources.load_source name, split); summary.COLUMNS names their Table 1 columns. Records
# with options are scored by option accuracy, records without by MultiMedEval (so MMMU's 5
# short-answer items are scored as open VQA; VLMEvalKit turns them into 2-option questions
# instead). pmc_vqa is the manually validated clean test set the paper reports (test_clean.csv,
# 2k items); pmc_vqa_full the whole test.csv; pmc_vqa_open drops the options of the clean set.
BENCHMARKS = {"vqa_rad": ("vqa_rad", "test"), "slake": ("slake", "test"), "path_vqa": ("path_vqa", "test"),
              "pmc_vqa": ("pmc_vqa", "test_clean"), "pmc_vqa_full": ("pmc_vqa", "test"),
              "pmc_vqa_open": ("pmc_vqa", "test_clean"), "mmmu": ("mmmu", "validation"),
              "gmai_mmbench": ("gmai_mmbench", "validation"), "synthetic": ("synthetic", "test")}
# The paper scores these with VLMEvalKit, whose protocol adds an LLM judge (--judge-model) for
# the answers its rules cannot read (judge_rows); the others with MultiMedEval's rules alone.
JUDGED = ("mmmu", "gmai_mmbench")


def load_benchmark(name, root, limit=None, subset=()):
    """The benchmark's records (sources.Records: `.report` counts the rows its reader skipped)."""
    from sources import Records, load_source
    source, split = BENCHMARKS[name]  # gold letters are checked here, before any generation
    loaded = load_source(source, root, split)
    records = [{**r, "answer": gold_letter(r)} if r.get("options") else r for r in loaded]
    first = {}
    for k, r in enumerate(records):  # one row per id: a repeated id would replace a row and count twice
        if r["id"] in first:
            j = first[r["id"]]
            raise ValueError(f"{name} in {root}: records {j} and {k} share the id {r['id']!r} (questions "
                             f"{records[j]['question'][:60]!r} and {r['question'][:60]!r}); ids must be unique")
        first[r["id"]] = k
    if name == "pmc_vqa_open":  # the same questions without options, scored against the gold text
        records = [{**r, "answer": r["options"][r["answer"]], "options": None} for r in records]
    for key, value in subset:
        if records and not any(key in r or key in r.get("meta", {}) for r in records):
            raise ValueError(f"--subset {key}={value}: no {name} record has a field {key!r}; fields: "
                             f"{sorted(set(records[0]) | set(records[0].get('meta', {})))}")
        records = [r for r in records if str(r.get(key, r.get("meta", {}).get(key))) == value]
    out = Records(records[:limit] if limit else records)
    out.report = loaded.report
    return out


# `run`'s variants in the order they run: the base prompt, then one per analysis flag
VARIANTS = ("base", "shuffle", "circular", "rephrase", "grounding", "cot")


def variant_records(records, variant, seed=0, rephrase_file=None, rephrasings=None):
    """The records one variant asks: all of them for base and grounding (the prompt differs), the
    multiple-choice ones for cot, shuffled or all rotations of those, or the rephrased ones
    (`rephrasings` {id: question}, by default robustness.collect_rephrasings without generation)."""
    mc = [r for r in records if r.get("options")]
    orderable = [r for r in mc if len({str(t) for t in r["options"].values()}) > 1]  # options that differ
    if variant == "shuffle":  # a question whose options all read alike has no other order: not asked
        return [robustness.shuffle_record(r, seed) for r in orderable]
    if variant == "circular":  # ... and, its gold letter moving under the same text, could never pass
        return [x for r in orderable for x in robustness.rotate_records(r)]
    if variant == "rephrase":
        return robustness.rephrase_records(records, rephrasings if rephrasings is not None else
                                           robustness.collect_rephrasings(records, rephrase_file)[0])
    return mc if variant == "cot" else records


# ---- Prompts (prompts.py; rendered through data.render_chat, the same chat code as training) -----
def template_for(record, cot=False):
    """The prompt template of a record: multiple choice (or the chain-of-thought prompt), else
    MultiMedEval's yes/no form when the gold is yes or no (vqa.is_yes_no), else the open one."""
    if record.get("options"):
        return "cot" if cot else "mc"
    return "closed" if is_yes_no(record["answer"]) else "open"


def build_prompt(record, template, grounding=False):
    """User-turn text of `record` for one template; one '<image>' per image, in order."""
    images = "<image>" * len(record["images"])
    question, options = record["question"].replace("<image>", "").strip(), record.get("options") or {}
    if template == "cot":  # the appendix A prompt, as the reasoning set was written with
        text = images + cot_prompt(question, options)
    else:
        text = EVAL_PROMPTS[template].format(images=images, question=question, options=format_options(options))
    return GROUNDING_PROMPT.format(prompt=text) if grounding else text


# ---- Backends: a batch of chat requests {"messages": [...], "images": [...]} in, texts out -------
class Completion(str):
    """A generated text that also says why it ended: finish 'stop' (a stop token or stop string)
    or 'length' (the max_new_tokens budget ran out). Behaves as the plain string everywhere."""
    finish = "stop"

    def __new__(cls, text, finish="stop"):
        self = super().__new__(cls, text)
        self.finish = finish
        return self


def cut_at_stop(text, stop):
    """The text up to and including the first stop string, or None when none occurs."""
    hits = [text.index(s) + len(s) for s in stop or () if s in text]
    return text[:min(hits)] if hits else None


class NativeBackend:
    """infimed.QwenVL with its key/value-cache `generate`: requests sorted by prompt length,
    left-padded batches, stop at <|im_end|> / <|endoftext|> (ids read from the tokenizer)."""

    def __init__(self, model_dir, device=None, dtype=None, batch_size=8, min_pixels=None, max_pixels=None):
        import torch
        import data
        import infimed
        from image_processor import ImageProcessor
        self.torch, self.data = torch, data
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        with open(os.path.join(model_dir, "config.json")) as f:
            kind = json.load(f).get("model_type")
        if kind not in ("qwen2_5_vl", "qwen2_vl"):
            raise ValueError(f"{model_dir} is a {kind!r} model: the native backend runs Qwen2-VL and Qwen2.5-VL "
                             "checkpoints only; run other models with vLLM (--backend vllm for the evaluated "
                             "model, --judge-backend vllm for a judge, --rephrase-backend vllm for a rephraser)")
        self.model = infimed.QwenVL.from_pretrained(model_dir, dtype=dtype, device=self.device).eval()
        self.tok = data.load_tokenizer(model_dir)
        limits = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        has_cfg = os.path.exists(os.path.join(model_dir, "preprocessor_config.json"))
        self.proc = ImageProcessor.from_pretrained(model_dir, **limits) if has_cfg else \
            ImageProcessor(**limits)
        self.batch_size = batch_size
        self.stop_ids, self.pad_id = self.data.stop_ids(self.tok), self.data.pad_id(self.tok)
        self.timings = Counter()  # seconds: 'images' (processing + tokenizing), 'generate'

    def encode(self, request, add_generation_prompt=True):
        """-> data.encode_prompt's dict for the rendered conversation (image pads expanded)."""
        text = self.data.render_chat(request["messages"], add_generation_prompt=add_generation_prompt)
        return self.data.encode_prompt(text, request.get("images") or [], self.tok, self.proc)

    def _batch(self, encoded):
        """Left-padded (data.collate) model inputs on the device; pixels None for text only."""
        b = self.data.collate(encoded, self.pad_id, padding_side="left")
        has_images = len(b["image_grid_thw"]) > 0
        pv = b["pixel_values"].to(self.device, next(self.model.parameters()).dtype) if has_images else None
        grid = b["image_grid_thw"].to(self.device) if has_images else None
        return b["input_ids"].to(self.device), b["attention_mask"].to(self.device), pv, grid

    def generate(self, requests, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=None, n=1, stop=None):
        """n Completions per request. With sampling, each request's j-th text draws from its own
        generator seeded seed + j (as vLLM seeds each request), so a text does not depend on the
        batch it was generated in: a resumed run samples what an uninterrupted one does. A text
        ends at the first of the `stop` strings (kept, as vLLM's include_stop_str_in_output) or at
        a stop token; one that ran into max_new_tokens first has finish 'length'."""
        t0 = time.perf_counter()
        encoded = [self.encode(r) for r in requests]
        self.timings["images"] += time.perf_counter() - t0
        rows = sorted(((i, j) for i in range(len(requests)) for j in range(n)),
                      key=lambda r: len(encoded[r[0]]["input_ids"]))
        out = [[None] * n for _ in requests]
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            for b in range(0, len(rows), self.batch_size):
                chunk = rows[b:b + self.batch_size]
                ids, mask, pv, grid = self._batch([encoded[i] for i, _ in chunk])
                new = self.model.generate(ids, mask, pv, grid, max_new_tokens=max_new_tokens, temperature=temperature,
                                          top_p=top_p, seed=None if seed is None else [seed + j for _, j in chunk],
                                          stop_token_ids=self.stop_ids)
                for (i, j), toks in zip(chunk, new):
                    text = self.tok.decode(toks, skip_special_tokens=True)
                    cut = cut_at_stop(text, stop)
                    out[i][j] = Completion(cut, "stop") if cut is not None else \
                        Completion(text, "length" if len(toks) >= max_new_tokens else "stop")
        self.timings["generate"] += time.perf_counter() - t0
        return out

    def prompt_logprobs(self, requests):
        """Per request: {'token_ids': [...], 'logprobs': [None, lp_1, ...]} of the rendered
        conversation (no generation prompt), log-probs in fp32 (as vLLM's prompt_logprobs)."""
        torch, res = self.torch, []
        with torch.inference_mode():
            for r in requests:
                e = self.encode(r, add_generation_prompt=False)
                ids, mask, pv, grid = self._batch([e])
                logits = self.model(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)[0].float()
                lp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
                res.append({"token_ids": e["input_ids"].tolist(), "logprobs": [None] + lp.tolist()})
        return res


def make_backend(kind, model_dir, **kw):
    """A backend by name: 'native' (NativeBackend) or 'vllm' (vllm_backend.VLLMBackend)."""
    if kind == "native":
        return NativeBackend(model_dir, **{k: v for k, v in kw.items() if k != "gpu_memory_utilization"})
    if kind == "vllm":
        from vllm_backend import VLLMBackend  # imports vllm only when built, only when chosen
        return VLLMBackend(model_dir, **{k: v for k, v in kw.items() if k != "device"})
    raise ValueError(f"unknown backend {kind!r}: native or vllm")


def make_backends(specs, given=None, **kw):
    """The backends one command needs, one per (kind, model_dir) of `specs`, in order; None where
    the model_dir is empty. Specs naming the same model (the same directory, however written) and
    backend share one backend (`given` holds those built already). A vLLM engine takes most of the
    GPU when it starts, so beside other models on the GPU (a second engine, a native backend not on
    the CPU) it would fail to start or starve them: each vLLM engine then gets an equal part of
    90% of the GPU per model on it, as vLLM's docs advise for two instances on one GPU; alone, it
    keeps vLLM's default. A backend in `given` is counted but not resized: its memory is the
    caller's."""
    def same(spec):
        kind, path = spec
        return kind, os.path.realpath(path) if path and os.path.isdir(path) else path
    built = {same(s): b for s, b in (given or {}).items()}
    models = list(dict.fromkeys(same(s) for s in specs if s[1])) + [s for s in built if s[1]]
    on_gpu = {s for s in models if s[0] == "vllm" or kw.get("device") != "cpu"}
    share = {"gpu_memory_utilization": round(0.9 / len(on_gpu), 3)} \
        if len(on_gpu) > 1 and any(kind == "vllm" for kind, _ in on_gpu) else {}
    for s in specs:
        if s[1] and same(s) not in built:
            built[same(s)] = make_backend(*s, **kw, **share)
    return [built[same(s)] if s[1] else None for s in specs]


# ---- Scoring of one sample -----------------------------------------------------------------------
def score_row(record, prompt, response, grounding=False):
    """One JSONL row: prompt, response, parsed answer, score and flags."""
    text = strip_boxes(response) if grounding else response
    meta = record.get("meta", {})
    row = {"id": record["id"], "base_id": meta.get("base_id", record["id"]), "question": record["question"],
           "prompt": prompt, "response": str(response), "gold": record["answer"], "flags": []}
    if getattr(response, "finish", "stop") == "length":  # cut by the token budget: counted apart
        row["flags"].append("truncated")
    if meta.get("skill"):
        row["skill"] = meta["skill"]
    row["clinical_skill"] = summary.skill_of(record)
    if labels := summary.group_labels(meta):
        row["groups"] = labels
    if record.get("options"):
        options, gold = record["options"], gold_letter(record)
        parsed, rule = parse_choice_rule(text, options, record["question"])  # the question: EXCEPT or not
        row.update(kind="mc", options=options, gold=gold, parsed=parsed, rule=rule, correct=parsed == gold,
                   correct_rules=parsed == gold, category=response_category(text, options, record["question"]),
                   invalid=parsed is None)
    else:
        s = vqa_scores(text, record["answer"])
        row.update(kind="vqa", parsed=text.strip(), **s)
        if s["closed"]:  # instruction following on yes/no questions
            row["invalid"] = yes_no_invalid(text)
    if grounding:
        row["box"] = parse_box(response)
        if row["box"] and meta.get("bbox"):
            row["iou"] = box_iou(row["box"], meta["bbox"])
    return row


# a judge asked again when its reply names no option (VLMEvalKit asks up to 3 times, then picks
# at random; here the row keeps the rules' verdict and is flagged 'judge_unreadable')
JUDGE_TRIES = 3
# VLMEvalKit settles by rule an answer with one option's letter or one option's text in it and
# leaves the rest to its judge. Our rules read further into prose; where a judge is given, it
# reads the answers decided by the rules that infer least surely (also inside an <answer> tag),
# unless the answer states that choice first (opens_with_choice). On the 4,472 graded answers
# the choice was made on (tests/data, docs/notes.md) these agreed with their graders on 400 of
# 462 (an option named by its text), 196 of 225 (a concluding sentence), 49 of 62 (a letter met
# once) and 267 of 280 (an option-by-option review), against 1,986 of 2,021 for a cue ("the
# answer is C") and 14 of 14 for a denied option of an EXCEPT question, which stay the rules'.
JUDGE_ALSO = ("option_text", "conclusion", "letter", "verdict")
_OPTION_HEADING = re.compile(r"^[\s*#>-]*\(?([A-Z])[.):]", re.M)


def opens_with_choice(text, options, question, letter):
    """Whether the answer's first line states `letter` by itself ('C', 'C. CT', '**C**') or as an
    answer ('The answer is C.'), however the answer goes on ('C. CT\n\nThe slices are axial.'),
    as a direct-answer prompt gets it; not the first line of an option-by-option review ('A.
    X-ray: the right first step.\nB. MRI: ...'), nor one the rest of the answer takes back ('C\n\n
    On reflection, ultrasound is the better first test.')."""
    text = text.strip()
    if len({m[1] for m in _OPTION_HEADING.finditer(text)} & set(options)) > 1:
        return False
    first_line, _, rest = text.partition("\n")
    first, rule = parse_choice_rule(first_line, options, question)
    return first == letter and rule.split(":")[-1] in ("exact", "cue") and \
        parse_choice_rule(rest, options, question)[0] in (None, letter)


def judge_letter(reply, options):
    """The option a judge's reply names, read as an answer is ('C', 'C. CT', 'The answer is C',
    'CT'; answers.parse_choice), 'Z' when it says none ('Z', 'Answer: Z', 'Z\n\nNo option fits':
    JUDGE_PROMPT's letter for no option, read as one more option), or None when it cannot be read."""
    return parse_choice_rule(reply or "", {**options, "Z": "none of the options"})[0]


def judge_rows(judge, rows, seed=0):
    """After VLMEvalKit's protocol: the rules first (answers.parse_choice), the LLM judge (any
    backend: .generate(requests, ...)) for the multiple-choice rows the rules left unresolved or
    decided only by inference from prose (JUDGE_ALSO, where the answer does not state its choice
    first), in place. A judged row is flagged 'judged' and keeps the judge's reply and letter
    ('judge_parsed', None for 'Z'); 'correct' becomes the judge's verdict, while 'parsed',
    'invalid' and 'correct_rules' stay the rules' (the invalid rate measures instruction
    following). The first try is greedy; a reply judge_letter cannot read is asked again,
    sampled (a greedy judge would repeat itself), JUDGE_TRIES tries in all, then flagged
    'judge_unreadable'. A request the judge fails on (too long for it, say) is flagged
    'judge_error' with its message. Both keep the rules' verdict and are not asked again on a
    rerun, nor are rows already judged; answers cut by the token budget are not judged (they
    have not concluded). A grounding answer is read without its boxes, as the rules read it.
    Returns how many rows it sent to the judge."""
    def answer(r):
        return strip_boxes(r["response"]) if "box" in r else r["response"]

    def inferred(r):  # a choice the rules found in the answer's prose, not one it states first
        return (r.get("rule", "").split(":")[-1] in JUDGE_ALSO
                and not opens_with_choice(answer(r), r["options"], r["question"], r["parsed"]))
    todo = [r for r in rows if r.get("kind") == "mc" and answer(r).strip() and (r["parsed"] is None or inferred(r))
            and not {"judged", "judge_unreadable", "judge_error", "truncated"} & set(r["flags"])]
    sent = len(todo)
    for attempt in range(JUDGE_TRIES):
        if not todo:
            break
        reqs = [{"messages": [{"role": "user", "content": JUDGE_PROMPT.format(
            question=r["question"], response=answer(r), options=format_options(r["options"]))}], "images": []}
            for r in todo]
        outs, errors = generate_each(judge, reqs, max_new_tokens=32, temperature=0.0 if attempt == 0 else 1.0,
                                     seed=seed + attempt)
        again = []
        for r, out, error in zip(todo, outs, errors):
            if error:
                r["flags"].append("judge_error")
                r["judge_error"] = error
                continue
            letter = judge_letter(out[0], r["options"])
            r["judge_response"] = out[0]
            if letter is None and attempt < JUDGE_TRIES - 1:
                again.append(r)
            elif letter is None:
                r["flags"].append("judge_unreadable")
            else:
                r["flags"].append("judged")
                r["judge_parsed"] = None if letter == "Z" else letter
                r["correct"] = r["judge_parsed"] == r["gold"]
        todo = again
    return sent


# ---- Resumable runs ------------------------------------------------------------------------------
def unscored_row(record, flag, **extra):
    """The row of a record that got no answer (flag 'missing_image' or 'error'): not scored
    (correct None; asked again when the run resumes), with its group labels, so that grounding
    per group can say which group lost it."""
    meta = record.get("meta", {})
    row = {"id": record["id"], "base_id": meta.get("base_id", record["id"]), "question": record["question"],
           "flags": [flag], **extra, "correct": None}
    if labels := summary.group_labels(meta):
        row["groups"] = labels
    return row


def read_rows(path):
    """Finished rows of a JSONL file by id. A line cut off by a killed run is dropped and the
    file rewritten without it, as is a complete last row without its newline (the next append
    would glue two rows into one), so appending continues cleanly."""
    rows, bad = {}, 0
    text = open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""
    for line in text.splitlines():
        try:
            r = json.loads(line)
            rows[r["id"]] = r
        except (json.JSONDecodeError, KeyError, TypeError):
            bad += 1
    if bad or (text and not text.endswith("\n")):
        write_rows(path, rows.values())
    return rows


def write_rows(path, rows):
    """Rewrite a JSONL file whole, through a temporary file, so that a kill meanwhile loses nothing."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


def generate_each(backend, reqs, **kw):
    """backend.generate over a batch; when the batch fails, request by request, so that one
    unreadable image costs its own item only. Returns (outputs, errors): a failed request's
    output is None and its error message is kept."""
    try:
        return backend.generate(reqs, **kw), [None] * len(reqs)
    except Exception:
        outs, errors = [], []
        for r in reqs:
            try:
                outs += backend.generate([r], **kw)
                errors.append(None)
            except Exception as e:
                outs.append(None)
                errors.append(f"{type(e).__name__}: {str(e)[:300]}")
        return outs, errors


def run_variant(backend, records, variant, cfg, path, judge=None, log=print):
    """Generate and score `records` into `path`, skipping ids already there (but asking again the
    rows that asked another question or prompt, and those that got no answer last time; refusing
    a file with rows of items not in `records`). Records whose image
    files are missing are written with the flag 'missing_image' (counted, not generated), those
    the backend cannot process (a corrupt image) with the flag 'error' and its message; at the
    end every record must have its row. With a `judge`, the multiple-choice answers the rules
    cannot read or only infer (this run's, and an earlier run's the judge has not read: judged
    without one, or before JUDGE_ALSO named their rule) are judged at the end."""
    from tqdm import tqdm
    done = read_rows(path)
    prompts = {r["id"]: build_prompt(r, template_for(r, variant == "cot"), variant == "grounding") for r in records}
    stale = {r["id"] for r in records if r["question"] != done.get(r["id"], {}).get("question", r["question"])
             or prompts[r["id"]] != done.get(r["id"], {}).get("prompt", prompts[r["id"]])}
    if stale:  # asked another question or prompt before (a rephrasing replaced, a prompt changed): asked again
        log(f"{path}: {len(stale)} rows asked another question or prompt than now (e.g. {sorted(stale)[0]}); "
            "asking again")
    failed = {i for i, r in done.items() if {"error", "missing_image"} & set(r.get("flags", []))} - stale
    if failed:  # no answer last time (out of memory, an image restored since): tried again
        log(f"{path}: {len(failed)} items got no answer before (error or missing image); trying them again")
    if stale or failed:
        stale |= failed
        done = {i: r for i, r in done.items() if i not in stale}
        write_rows(path, done.values())
    extra = set(done) - {r["id"] for r in records}
    if extra:  # its summary would speak of this run's items, its file of others too
        raise ValueError(f"{path} holds {len(extra)} rows of items this run does not ask (e.g. {sorted(extra)[0]}), "
                         "written by an earlier run with a larger --limit or another --subset; choose another "
                         "--out, or delete the file to start over")
    todo = [r for r in records if r["id"] not in done]
    chunk, desc = max(1, cfg.batch_size) * 4, os.sep.join(path.split(os.sep)[-2:])  # benchmark/variant.jsonl
    with open(path, "a", encoding="utf-8") as f, \
            tqdm(total=len(records), initial=len(records) - len(todo), desc=desc, unit="sample") as bar:
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            missing = {r["id"]: [str(p) for p in r["images"]
                                 if isinstance(p, (str, os.PathLike)) and not os.path.exists(p)] for r in part}
            ready = [r for r in part if not missing[r["id"]]]
            rows = [unscored_row(r, "missing_image", missing=missing[r["id"]]) for r in part if missing[r["id"]]]
            asked = [prompts[r["id"]] for r in ready]
            reqs = [{"messages": [{"role": "user", "content": p}], "images": r["images"]}
                    for r, p in zip(ready, asked)]
            budget = dict(max_new_tokens=cfg.cot_max_new_tokens, stop=["</answer>"]) if variant == "cot" else \
                dict(max_new_tokens=cfg.max_new_tokens)
            outs, errors = generate_each(backend, reqs, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                                         **budget) if reqs else ([], [])
            rows += [unscored_row(r, "error", error=e) for r, e in zip(ready, errors) if e]
            scored = [score_row(r, p, o[0], variant == "grounding")
                      for r, p, o, e in zip(ready, asked, outs, errors) if not e]
            for r in rows + scored:
                r["variant"] = variant
                f.write(json.dumps(r) + "\n")
            f.flush()
            bar.update(len(part))
    rows = read_rows(path)
    if judge is not None and (n_judged := judge_rows(judge, list(rows.values()), cfg.seed)):  # earlier ones' too
        write_rows(path, rows.values())
        log(f"{path}: {n_judged} answers sent to the judge (the rules could not read them or only inferred)")
    lost = [r["id"] for r in records if r["id"] not in rows]
    if lost:
        raise RuntimeError(f"{path}: {len(lost)} of {len(records)} items have no row (e.g. {lost[:3]}); rerun "
                           "the same command to generate them")
    n_missing = sum("missing_image" in r["flags"] for r in rows.values())
    if n_missing:
        log(f"{path}: {n_missing} of {len(rows)} samples skipped, image file missing "
            f"(e.g. {next(r['missing'][0] for r in rows.values() if 'missing' in r)})")
    misses = Counter(f for r in rows.values() for f in r["flags"] if f in ("judge_unreadable", "judge_error"))
    if misses:
        log(f"{path}: the judge gave no verdict on {sum(misses.values())} answers ({misses['judge_unreadable']} "
            f"unreadable replies, {misses['judge_error']} failed requests); they keep the rules' verdict")
    n_error = sum("error" in r["flags"] for r in rows.values())
    if n_error:
        log(f"{path}: {n_error} of {len(rows)} samples could not be processed (e.g. "
            f"{next(r['error'] for r in rows.values() if 'error' in r['flags'])})")
    return [rows[r["id"]] for r in records]


# ---- Orchestration -------------------------------------------------------------------------------
def code_version():
    """The git commit of this code, kept in run.json so that a result names the code behind it."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def evaluate(cfg, benchmarks, backend=None, log=print):
    """Run every benchmark ({name: data root}) and variant; write JSONL, summary.json, table.md."""
    os.makedirs(cfg.out, exist_ok=True)
    run = {**asdict(cfg), "name": cfg.name or os.path.basename(os.path.normpath(cfg.model)),
           "code_version": code_version(),
           "prompts": {**EVAL_PROMPTS, "cot": COT_PROMPT, "grounding": GROUNDING_PROMPT}}
    run_path = os.path.join(cfg.out, "run.json")
    old = json.load(open(run_path)) if os.path.exists(run_path) else run  # resuming: same settings
    diff = [k for k in ("model", "backend", "dtype", "max_new_tokens", "cot_max_new_tokens", "temperature", "top_p",
                        "seed", "min_pixels", "max_pixels")  # a run.json older than a setting: its default
            if old.get(k, getattr(EvalConfig, k, None)) != run.get(k)]
    if old.get("judge_model") and (old.get("judge_model"), old.get("judge_backend")) != \
            (run.get("judge_model"), run.get("judge_backend")):  # its rows were judged by that judge
        diff += ["judge_model", "judge_backend"]
    if diff:
        raise ValueError(f"{cfg.out} holds a run with other settings ({', '.join(diff)}); "
                         "choose another --out or delete it to start over")
    with open(run_path, "w") as f:
        json.dump(run, f, indent=2, default=str)
    kw = dict(batch_size=cfg.batch_size, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
              device=cfg.device, dtype=cfg.dtype)
    model, judge, rephraser = make_backends(  # the evaluated model asked again shares its engine
        [(cfg.backend, cfg.model), (cfg.judge_backend, cfg.judge_model if set(JUDGED) & set(benchmarks) else None),
         (cfg.rephrase_backend, cfg.rephrase_model if "rephrase" in cfg.variants else None)],
        {(cfg.backend, cfg.model): backend} if backend is not None and cfg.model else None, **kw)
    backend = backend if backend is not None else model
    summary_path = os.path.join(cfg.out, "summary.json")
    earlier = json.load(open(summary_path, encoding="utf-8")).get("benchmarks", {}) if os.path.exists(summary_path) \
        else {}  # benchmarks an earlier command on this --out ran: kept, so that the table shows them all
    result = {"run": run, "benchmarks": {}}  # what summary.json holds
    for name, root in benchmarks.items():
        records = load_benchmark(name, root, cfg.limit, cfg.subset)
        log(f"{name}: {len(records)} records from {root}")
        skipped = dict(records.report.counts)  # rows the reader skipped (malformed, another subject), by reason
        if skipped:
            log(records.report.lines())
        lacking = summary.missing_axes(name, records)
        if lacking:
            log(f"{name}: no column {', '.join(map(repr, lacking))} in {root}: accuracy by that axis is not "
                "reported (the overall numbers are)")
        os.makedirs(os.path.join(cfg.out, name), exist_ok=True)
        per, sources = {}, {}
        for v in cfg.variants:  # base, then the analyses' variants (shuffled, rotated, ...)
            rephrasings = None
            if v == "rephrase":  # the dataset's own, a model's (checked) or a template's; kept for reuse
                rephrasings, sources = robustness.collect_rephrasings(
                    records, cfg.rephrase_file, os.path.join(cfg.out, name, "rephrasings.jsonl"), rephraser,
                    generate=True, seed=cfg.seed)
            recs = variant_records(records, v, cfg.seed, rephrasings=rephrasings)
            asked = len({r.get("meta", {}).get("base_id", r["id"]) for r in recs})
            if v in ("shuffle", "circular") and asked < (n_mc := sum(bool(r.get("options")) for r in records)):
                log(f"{name}: {n_mc - asked} of {n_mc} multiple-choice questions have options that all read "
                    f"alike and cannot be reordered; the {v} analysis leaves them out")
            if recs:
                per[v] = run_variant(backend, recs, v, cfg, os.path.join(cfg.out, name, f"{v}.jsonl"),
                                     judge if name in JUDGED else None, log)
            else:
                log(f"{name}: no records for the {v} analysis (needs options / rephrasings), skipped")
        analyses = summary.analyses(per, os.path.join(cfg.out, name))
        if "rephrase" in analyses:  # where this run's rephrasings came from (a file may hold more)
            asked = {r["base_id"] for r in per.get("rephrase", [])}
            analyses["rephrase"]["sources"] = dict(Counter(src for i, src in sources.items() if i in asked))
        result["benchmarks"][name] = {**{v: summary.summarize(rows) for v, rows in per.items()},
                                      "analyses": analyses, **({"missing_group_columns": lacking} if lacking else {}),
                                      **({"skipped_rows": skipped} if skipped else {})}
        for v, rows in per.items():  # answers the token budget cut are said, not only counted
            if result["benchmarks"][name][v].get("n_truncated"):
                log(f"{name}/{v}: {result['benchmarks'][name][v]['n_truncated']} of {len(rows)} answers were cut by "
                    "the token budget (--max-new-tokens, --cot-max-new-tokens); summary.json gives the accuracy "
                    "without them (accuracy_complete)")
    result["benchmarks"] = {**{b: d for b, d in earlier.items() if b not in result["benchmarks"]},
                            **result["benchmarks"]}
    result["timings"] = dict(getattr(backend, "timings", {}))
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
    with open(os.path.join(cfg.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(summary.table_md([(run["name"], result)]))
    return result


# ---- CLI -----------------------------------------------------------------------------------------
def data_roots(roots, benchmarks):
    """--data-root values -> {benchmark: folder}. NAME=DIR gives one benchmark its folder; a plain
    DIR serves every benchmark not named. A NAME that is no benchmark (a typo such as vqarad=) or
    an empty DIR is an error, never a folder path."""
    import click
    named, plain = {}, []
    for r in roots:
        name, sep, folder = r.partition("=")
        if sep and re.fullmatch(r"[A-Za-z0-9_]+", name):
            if name not in BENCHMARKS:
                raise click.UsageError(f"--data-root {r}: no benchmark named {name!r}; known: {', '.join(BENCHMARKS)}")
            if not folder:
                raise click.UsageError(f"--data-root {r}: give the folder after '=' ({name}=DIR)")
            named[name] = folder
        else:
            plain.append(r)
    if len(plain) > 1:
        raise click.UsageError(f"several unnamed --data-root values ({', '.join(plain)}): name them, NAME=DIR")
    dirs = {b: named.get(b, plain[0] if plain else None) for b in benchmarks}
    if None in dirs.values():
        raise click.UsageError(f"no --data-root for {', '.join(b for b, d in dirs.items() if d is None)}")
    return dirs


def _cli():
    import click

    @click.group()
    def cli():
        """Evaluate infimed / Qwen2.5-VL checkpoints on the paper's benchmarks."""

    @cli.command()
    @click.option("--model", required=True, help="checkpoint directory (HF layout)")
    @click.option("--benchmark", "benchmarks", multiple=True, required=True, type=click.Choice(list(BENCHMARKS)))
    @click.option("--data-root", "roots", multiple=True, required=True,
                  help="raw data root for every benchmark, or NAME=DIR per benchmark")
    @click.option("--backend", type=click.Choice(["native", "vllm"]), default="native")
    @click.option("--out", default=EvalConfig.out, show_default=True)
    @click.option("--name", default="", help="row label in the tables")
    @click.option("--limit", type=int)
    @click.option("--subset", multiple=True, help="KEY=VALUE filter on record/meta fields")
    @click.option("--max-new-tokens", default=EvalConfig.max_new_tokens, show_default=True)
    @click.option("--cot-max-new-tokens", default=EvalConfig.cot_max_new_tokens, show_default=True,
                  help="budget of the --cot answers (they stop at </answer>); cut ones are counted")
    @click.option("--temperature", default=EvalConfig.temperature, show_default=True)
    @click.option("--top-p", default=EvalConfig.top_p, show_default=True)
    @click.option("--seed", default=EvalConfig.seed, show_default=True)
    @click.option("--batch-size", default=EvalConfig.batch_size, show_default=True)
    @click.option("--device", help="native backend device (default: cuda if available)")
    @click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]))
    @click.option("--min-pixels", type=int)
    @click.option("--max-pixels", type=int, default=EvalConfig.max_pixels, show_default=True)
    @click.option("--shuffle", is_flag=True, help="options in a seeded random order")
    @click.option("--circular", is_flag=True, help="all cyclic option rotations (CircularEval)")
    @click.option("--rephrase", is_flag=True, help="rephrased questions: the dataset's own, else (multiple "
                  "choice) a checked rephrasing by --rephrase-model or a template; kept in OUT/<benchmark>/"
                  "rephrasings.jsonl")
    @click.option("--rephrase-file", type=click.Path(exists=True), help='JSONL of {"id", "question"} (wins)')
    @click.option("--rephrase-model", help="checkpoint that rephrases the multiple-choice questions")
    @click.option("--rephrase-backend", type=click.Choice(["native", "vllm"]), help="default: --backend")
    @click.option("--grounding", is_flag=True, help="also ask for a bounding box")
    @click.option("--cot", is_flag=True, help="chain-of-thought prompt, samples grouped by skill")
    @click.option("--judge-model", help="checkpoint that judges the MMMU and GMAI-MMBench answers the rules "
                  "cannot read or only infer from prose (after VLMEvalKit's protocol)")
    @click.option("--judge-backend", type=click.Choice(["native", "vllm"]), help="default: --backend")
    def run(benchmarks, roots, subset, **kw):
        """Run benchmarks; resumes from OUT's JSONL files."""
        # a rephrase file or model implies --rephrase
        kw["rephrase"] = kw["rephrase"] or bool(kw["rephrase_file"]) or bool(kw["rephrase_model"])
        for s in subset:
            if "=" not in s:
                raise click.BadParameter(f"{s!r}: write KEY=VALUE (e.g. answer_type=CLOSED)", param_hint="--subset")
        variants = ("base",) + tuple(v for v in VARIANTS[1:] if kw.pop(v))  # the analysis flags
        cfg = EvalConfig(**kw, subset=tuple(tuple(s.split("=", 1)) for s in subset), variants=variants)
        s = evaluate(cfg, data_roots(roots, benchmarks), log=click.echo)
        click.echo(open(os.path.join(cfg.out, "table.md"), encoding="utf-8").read())
        click.echo(f"wrote {cfg.out}/summary.json, table.md and per-sample JSONL ({len(s['benchmarks'])} benchmarks)")

    @cli.command()
    @click.argument("runs", nargs=-1, required=True)
    @click.option("-o", "--output", help="also write the Markdown table here")
    def compare(runs, output):
        """Table-1-shaped Markdown comparing several run directories side by side."""
        table = summary.compare(runs)
        click.echo(table)
        if output:
            with open(output, "w", encoding="utf-8") as f:
                f.write(table)

    return cli


if __name__ == "__main__":
    _cli()()
