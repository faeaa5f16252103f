"""Robustness and instruction-following analyses of evaluation runs, and their reports: which
records each analysis asks (evaluate.py generates and scores them), and what the per-sample
JSONL rows then say.

    python evaluate.py run ... --shuffle --circular --rephrase --grounding --cot   # the analyses
    python evaluate.py compare runs/base runs/trained -o table.md   # Table 1 shape, side by side
    python -m pytest -q tests/test_report.py

- `variant_records`: the records of a variant: options shuffled with a fixed seed, every cyclic
  rotation (CircularEval), rephrased questions; base, grounding and cot ask the same records
  with another prompt (prompts.py).
- `judge_rows`: an optional LLM judge for multiple-choice answers the parser found invalid
  (evaluate.py calls it on each chunk of scored rows; judged rows are flagged).
- `summarize`: one variant of one benchmark -> MultiMedEval metrics, option accuracy,
  instruction following (invalid rate, response-category shares, judged count), positional bias
  (chosen vs gold letters), per-skill accuracy, box rate and IoU for grounding.
- `analyses`: each variant against the base run: shuffled options, rephrased questions and
  grounding (accuracy change and per-question flips), CircularEval, chain-of-thought samples
  grouped by the paper's five clinical skills (written to cot_by_skill.md for reading).
- `table_md` / `compare`: Markdown shaped like the paper's Table 1, one row per run, one column
  per benchmark, then a robustness / instruction-following table.
Everything here is pure Python over dicts (the judge is handed a backend): no model, no data
loading, no import of evaluate.
"""
import json
import os
import random
import re
from collections import Counter, defaultdict

from prompts import JUDGE_PROMPT, REPHRASE_PROMPT, REPHRASE_TEMPLATES, format_options

# Table 1 columns in the paper's order, keyed by evaluate.BENCHMARKS names
COLUMNS = {"vqa_rad": "VQA-RAD", "slake": "SLAKE(en)", "path_vqa": "Path-VQA", "pmc_vqa": "PMC-VQA",
           "pmc_vqa_full": "PMC-VQA(full test)", "pmc_vqa_open": "PMC-VQA(open)", "mmmu": "MMMU(H&M)",
           "gmai_mmbench": "GMAI-MMBench", "synthetic": "Synthetic"}
# The Table 1 number of each benchmark. The paper reports MultiMedEval's VQA metrics for VQA-RAD,
# SLAKE and Path-VQA, and its numbers are closed-question accuracy (README, "Which number is
# Table 1's"); multiple-choice benchmarks report option accuracy; a benchmark not listed reports
# accuracy over all its items.
TABLE1_METRIC = {"vqa_rad": "closed_accuracy", "slake": "closed_accuracy", "path_vqa": "closed_accuracy"}
VQA_METRICS = (("closed_accuracy", "Closed acc."), ("open_recall", "Open recall"),
               ("open_accuracy", "Open acc. (recall >= 0.75)"), ("bleu1", "BLEU-1"), ("f1", "F1"),
               ("accuracy", "All items acc."))
SKILLS = [  # the paper's five clinical skills (section 3.2); first matching pattern wins
    ("modality recognition", r"modalit|imaging (?:technique|method)|type of (?:image|scan)|kind of (?:image|scan)|sequence"),
    ("anatomical localization", r"\bwhere\b|locat|which (?:organ|side|part|lobe|region)|left or right|position|anatom"),
    ("disease feature interpretation", r"abnormal|lesion|diagnos|finding|feature|shape|size|densit|intensit|disease|patholog"),
    ("option comparison reasoning", r"which of the following|most likely|best|compar|differ"),
    ("question-image alignment", r""),
]
# the synthetic benchmark's own skill names (demo.synthetic.SKILLS) -> the paper's five
SKILL_ALIASES = {"modality": "modality recognition", "side": "anatomical localization",
                 **dict.fromkeys(("presence", "shape", "brightness", "size", "count"), "disease feature interpretation")}
# Grouping axes per benchmark: MMMU Health & Medicine's five subjects (the paper's "subfields",
# e.g. Diagnostics_and_Laboratory_Medicine) and GMAI-MMBench's official axes (the columns
# VLMEvalKit's GMAIMMBenchDataset reports accuracy by). Column names match case-insensitively.
GROUP_AXES = {"mmmu": ("subject",), "gmai_mmbench": ("clinical VQA task", "department", "perceptual granularity")}
VARIANTS = ("base", "shuffle", "circular", "rephrase", "grounding", "cot")  # evaluate.py run flags
CATEGORIES = ("single_letter", "answer_prefixed", "cot", "other", "invalid")  # evaluate.response_category


# ---- Robustness variants: which records each analysis asks --------------------------------
def permute_options(record, order, tag):
    """A copy of `record` whose option i holds the text of old letter order[i]; a gold letter
    follows its text (a gold given as option text needs no change). meta['order'] keeps the
    mapping and meta['base_id'] the original id; id gains '#tag'."""
    old, keys = record["options"], list(record["options"])
    letter = str(record["answer"]).strip().upper()
    return {**record, "id": f"{record['id']}#{tag}", "options": {k: old[o] for k, o in zip(keys, order)},
            "answer": keys[order.index(letter)] if letter in old else record["answer"],
            "meta": {**record.get("meta", {}), "base_id": record["id"], "order": list(order)}}


def shuffle_record(record, seed):
    """Options in a random order fixed by (seed, record id): reruns and resumes agree. A draw
    that leaves the order as it was is rotated by one (two options: swapped), so every shuffled
    question really is reordered and the accuracy change measures reorderings only."""
    keys = list(record["options"])
    order = keys[:]
    random.Random(f"{seed}:{record['id']}").shuffle(order)
    if order == keys:
        order = keys[1:] + keys[:1]
    return permute_options(record, order, "shuffle")


def rotate_records(record):
    """All cyclic rotations of the options (MMBench CircularEval); rotation 0 is the original."""
    keys = list(record["options"])
    return [permute_options(record, keys[k:] + keys[:k], f"rot{k}") for k in range(len(keys))]


def template_rephrasing(question):
    """A rule-based rewording of a question (REPHRASE_TEMPLATES): 'What is the organ?' -> 'Can you
    identify the organ?'; anything else gets 'Based on the image, ...'."""
    q = question.strip()
    for pattern, form in REPHRASE_TEMPLATES:
        m = re.match(pattern, q, re.I | re.S)
        if m:
            rest = m.group(1)
            return form.format(rest if pattern != r"^(.+)$" else rest[:1].lower() + rest[1:])


def _words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def check_rephrasing(question, candidate, options=None):
    """(ok, reason) for a rephrased question: not empty, not the same words, still a question
    (ends with '?'), no option lines or option text the question did not already contain (the
    options stay as they are and the answer must not leak), every number kept, not rambling.
    Whether it means the same cannot be checked by rule: the cached file is there to read."""
    c = (candidate or "").strip().strip("\"'").strip()
    if not c:
        return False, "empty"
    if _words(c) == _words(question):
        return False, "unchanged"
    if not c.endswith("?"):
        return False, "not_a_question"
    if re.search(r"^\s*\(?[A-J][.):]\s", c, re.M):
        return False, "lists_options"
    if any(t and t.lower() in c.lower() and t.lower() not in question.lower() for t in (options or {}).values()):
        return False, "names_an_option"
    if set(re.findall(r"\d+(?:\.\d+)?", question)) - set(re.findall(r"\d+(?:\.\d+)?", c)):
        return False, "changed_numbers"
    if len(c.split()) > 3 * len(question.split()) + 10:
        return False, "too_long"
    return True, "ok"


def collect_rephrasings(records, rephrase_file=None, cache=None, backend=None, generate=False, seed=0):
    """{id: rephrased question} and {id: where it came from}. First wins: a --rephrase-file line
    ({"id", "question"}); a line of `cache` (an earlier run's); the record's own rephrasing
    (VQA-RAD's question_rephrase, whose placeholder 'NULL' means none); with `generate`, for each
    multiple-choice record: `backend`'s rephrasing (REPHRASE_PROMPT) when check_rephrasing passes
    it, else template_rephrasing. Generated ones are appended to `cache` as {"id", "original",
    "question", "source", "check"} lines, for the user to read and reuse as a --rephrase-file."""
    found, source = {}, {}
    for path, tag in ((rephrase_file, "file"), (cache, "cache")):
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for d in map(json.loads, filter(str.strip, f)):
                    if d.get("question") and d["id"] not in found:
                        found[d["id"]], source[d["id"]] = d["question"].strip(), d.get("source", tag)
    for r in records:
        own = (r.get("meta", {}).get("question_rephrase") or "").strip()
        if r["id"] not in found and own and own.upper() != "NULL":
            found[r["id"]], source[r["id"]] = own, "dataset"
    todo = [r for r in records if generate and r.get("options") and r["id"] not in found]
    asked = backend.generate([{"messages": [{"role": "user", "content": REPHRASE_PROMPT.format(question=r["question"])}],
                               "images": []} for r in todo], max_new_tokens=96, temperature=0.0, seed=seed) \
        if todo and backend is not None else [[None]] * len(todo)
    lines = []
    for r, out in zip(todo, asked):
        ok, why = check_rephrasing(r["question"], out[0], r["options"]) if out[0] is not None else (False, "no_model")
        q, src = (out[0].strip().strip("\"'").strip(), "model") if ok else \
            (template_rephrasing(r["question"]), "template")
        found[r["id"]], source[r["id"]] = q, src
        lines.append({"id": r["id"], "original": r["question"], "question": q, "source": src, "check": why,
                      **({"model_output": out[0]} if out[0] is not None and not ok else {})})
    if cache and lines:
        with open(cache, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return found, source


def rephrase_records(records, rephrasings):
    """Copies of the records that have a rephrasing ({id: question}), asking it instead."""
    return [{**r, "id": r["id"] + "#rephrase", "question": rephrasings[r["id"]],
             "meta": {**r.get("meta", {}), "base_id": r["id"]}} for r in records if r["id"] in rephrasings]


def variant_records(records, variant, seed=0, rephrase_file=None, rephrasings=None):
    """The records one variant asks: all of them for base and grounding (the prompt differs), the
    multiple-choice ones for cot, shuffled or all rotations of those, or the rephrased ones
    (`rephrasings` {id: question}, by default collect_rephrasings without generation)."""
    mc = [r for r in records if r.get("options")]
    if variant == "shuffle":
        return [shuffle_record(r, seed) for r in mc]
    if variant == "circular":
        return [x for r in mc for x in rotate_records(r)]
    if variant == "rephrase":
        return rephrase_records(records, rephrasings if rephrasings is not None else
                                collect_rephrasings(records, rephrase_file)[0])
    return mc if variant == "cot" else records


# ---- Instruction following: an LLM judge for answers the parser found invalid -------------
def judge_rows(judge, rows, seed=0):
    """VLMEvalKit's protocol: the rules first (evaluate.parse_choice), the LLM judge (any backend:
    .generate(requests, ...)) only for the multiple-choice rows the rules left unresolved, in
    place. A judged row is flagged 'judged' and keeps the judge's reply and letter
    ('judge_parsed'); 'correct' becomes the judge's verdict, while 'parsed', 'invalid' and
    'correct_rules' stay the rules' (the invalid rate measures instruction following)."""
    todo = [r for r in rows if r.get("kind") == "mc" and r["parsed"] is None and r["response"]]
    if not todo:
        return
    reqs = [{"messages": [{"role": "user", "content": JUDGE_PROMPT.format(
        question=r["question"], response=r["response"],
        options=format_options(r["options"]))}], "images": []} for r in todo]
    for r, out in zip(todo, judge.generate(reqs, max_new_tokens=8, temperature=0.0, seed=seed)):
        letter = out[0].strip("*()[]\"'`“”‘’. \t\n").upper()  # ' C.' or '**C**' -> 'C'
        r["flags"].append("judged")
        r["judge_response"] = out[0]
        r["judge_parsed"] = letter if letter in r["options"] else None
        r["correct"] = r["judge_parsed"] == r["gold"]


# ---- Summaries, comparisons, tables --------------------------------------------------------
def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def _fmt(x):
    return "-" if x is None else f"{100 * x:.2f}"


def _by(rows, key):
    groups = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return groups


def _accuracy(rows):
    return {"n": len(rows), "accuracy": _mean(bool(r["correct"]) for r in rows)}


def summarize(rows):
    """Metrics of one variant's rows; rows with correct=None (image missing) are counted apart."""
    scored = [r for r in rows if r.get("correct") is not None]
    s = {"n": len(rows), "n_scored": len(scored), "n_missing_image": sum("missing_image" in r["flags"] for r in rows),
         "n_error": sum("error" in r["flags"] for r in rows),
         "accuracy": _mean(bool(r["correct"]) for r in scored),
         "accuracy_rules": _mean(bool(r.get("correct_rules", r["correct"])) for r in scored)}
    vqa, mc = [r for r in scored if r["kind"] == "vqa"], [r for r in scored if r["kind"] == "mc"]
    if vqa:  # MultiMedEval's metric names
        closed, open_ = [r for r in vqa if r["closed"]], [r for r in vqa if not r["closed"]]
        s.update(n_closed=len(closed), n_open=len(open_), closed_accuracy=_mean(r["correct"] for r in closed),
                 open_recall=_mean(r["recall"] for r in open_), open_accuracy=_mean(r["correct"] for r in open_),
                 recall=_mean(r["recall"] for r in vqa), f1=_mean(r["f1"] for r in vqa),
                 bleu1=_mean(r["bleu1"] for r in vqa), yes_no_invalid_rate=_mean(r["invalid"] for r in closed))
    truncated = [r for r in scored if "truncated" in r["flags"]]
    if truncated:  # answers the token budget cut: counted, and the accuracy without them given too
        complete = [r for r in scored if "truncated" not in r["flags"]]
        s.update(n_truncated=len(truncated), truncated_rate=len(truncated) / len(scored),
                 accuracy_complete=_mean(bool(r["correct"]) for r in complete),
                 invalid_rate_complete=_mean(r.get("parsed") is None for r in complete if r["kind"] == "mc"))
    if mc:
        cats = Counter(r["category"] for r in mc)
        s.update(n_mc=len(mc), mc_accuracy=_mean(r["correct"] for r in mc),
                 mc_accuracy_rules=_mean(r.get("correct_rules", r["correct"]) for r in mc),
                 invalid_rate=_mean(r["parsed"] is None for r in mc),
                 categories={k: cats[k] / len(mc) for k in CATEGORIES},
                 judged=sum("judged" in r["flags"] for r in mc),
                 chosen_letters=dict(sorted(Counter(r["parsed"] or "invalid" for r in mc).items())),
                 gold_letters=dict(sorted(Counter(r["gold"] for r in mc).items())))
    if any(r.get("groups") for r in scored):
        s["by_group"] = by_group(scored)
    if any("skill" in r for r in scored):  # per-skill accuracy where the benchmark names skills
        s["by_skill"] = {k: _accuracy(g) for k, g in sorted(_by(scored, lambda r: r.get("skill", "-")).items())}
    if any("box" in r for r in scored):
        s["box_rate"] = _mean(r.get("box") is not None for r in scored)
        s["mean_iou"] = _mean(r["iou"] for r in scored if "iou" in r)
    return s


def compare_rows(base, other):
    """Accuracy on the questions both runs scored, and per-question flips."""
    b, o = ({r["base_id"]: bool(r["correct"]) for r in rows if r.get("correct") is not None} for rows in (base, other))
    ids = sorted(set(b) & set(o))
    if not ids:
        return {"n": 0}
    acc_b, acc_o = _mean(b[i] for i in ids), _mean(o[i] for i in ids)
    return {"n": len(ids), "accuracy_base": acc_b, "accuracy_variant": acc_o, "delta": acc_o - acc_b,
            "consistency": _mean(b[i] == o[i] for i in ids),  # per question: the same verdict both times
            "right_to_wrong": [i for i in ids if b[i] and not o[i]], "wrong_to_right": [i for i in ids if o[i] and not b[i]]}


def circular_accuracy(rows):
    """CircularEval (MMBench): a question counts right only when every rotation of it was right."""
    by_q = _by(rows, lambda r: r["base_id"])
    return _mean(all(r["correct"] for r in g) for g in by_q.values()) or 0.0


def group_labels(meta):
    """{axis: value} for every GROUP_AXES axis the record's meta carries (any benchmark's)."""
    lower = {str(k).lower(): v for k, v in (meta or {}).items()}
    return {a: str(lower[a.lower()]) for axes in GROUP_AXES.values() for a in axes
            if lower.get(a.lower()) not in (None, "")}


def missing_axes(benchmark, records):
    """The GROUP_AXES columns a benchmark's records lack (their grouping is then not reported)."""
    return [a for a in GROUP_AXES.get(benchmark, ()) if not any(a in group_labels(r.get("meta")) for r in records)]


def by_group(rows):
    """{axis: {value: {"n", "accuracy"}}} over the rows' group labels."""
    out = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for axis, value in r.get("groups", {}).items():
            out[axis][value].append(r)
    return {a: {v: _accuracy(g) for v, g in sorted(vals.items())} for a, vals in sorted(out.items())}


def grounding_by_group(base, grounding, path):
    """Accuracy with and without the grounding prompt per group value (and overall), on the
    questions both runs scored; also written as Markdown to `path`."""
    res = {"overall": {"all": compare_rows(base, grounding)}}
    labels = {r["base_id"]: r.get("groups", {}) for r in base}
    for axis in sorted({a for g in labels.values() for a in g}):
        values = sorted({g[axis] for g in labels.values() if axis in g})
        res[axis] = {v: compare_rows([r for r in base if labels[r["base_id"]].get(axis) == v],
                                     [r for r in grounding if labels.get(r["base_id"], {}).get(axis) == v])
                     for v in values}
    lines = ["# Accuracy without and with the grounding prompt", "",
             "| axis | group | n | without | with | Δ |", "|---|---|---|---|---|---|"]
    for axis, groups in res.items():
        for v, c in groups.items():
            if c.get("n"):
                lines.append(f"| {axis} | {v} | {c['n']} | {_fmt(c['accuracy_base'])} | "
                             f"{_fmt(c['accuracy_variant'])} | {_fmt(c['delta'])} |")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return {axis: {v: {k: c.get(k) for k in ("n", "accuracy_base", "accuracy_variant", "delta")}
                   for v, c in groups.items()} for axis, groups in res.items()}


def skill_of(record_or_row):
    """The clinical skill a question exercises: the sample's own 'skill' (row field or record
    meta) when it names one of the five or a synthetic skill, else the first SKILLS pattern that
    matches the question."""
    skill = record_or_row.get("skill") or record_or_row.get("meta", {}).get("skill")
    skill = SKILL_ALIASES.get(skill, skill)
    if skill in dict(SKILLS):
        return skill
    return next(name for name, pat in SKILLS if re.search(pat, record_or_row["question"].lower()))


def cot_report(rows, path):
    """Chain-of-thought samples grouped by clinical skill, for reading (Markdown at `path`, at
    most 20 samples a skill); returns each skill's count and accuracy."""
    groups = _by([r for r in rows if r.get("correct") is not None], skill_of)
    res = {name: _accuracy(groups.get(name, [])) for name, _ in SKILLS}
    lines = ["# Chain-of-thought samples by clinical skill", ""]
    for name, _ in SKILLS:
        lines += [f"## {name} ({res[name]['n']} samples, accuracy {_fmt(res[name]['accuracy'])})", ""]
        for r in groups.get(name, [])[:20]:
            lines += [f"**{r['id']}** gold {r['gold']}, parsed {r['parsed']}", "", "> " + r["response"].replace("\n", "\n> "), ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return res


def analyses(variant_rows, out_dir):
    """{variant: rows} of one benchmark -> each analysis against the base variant."""
    base, res = variant_rows.get("base"), {}
    for v in ("shuffle", "rephrase", "grounding"):  # shuffling only touches multiple-choice rows
        if v in variant_rows and base is not None:
            res[v] = compare_rows([r for r in base if v != "shuffle" or r.get("kind") == "mc"], variant_rows[v])
    if "circular" in variant_rows:
        rows = [r for r in variant_rows["circular"] if r.get("correct") is not None]
        res["circular"] = {"n": len({r["base_id"] for r in rows}), "circular_accuracy": circular_accuracy(rows),
                           "rotation_accuracy": _mean(r["correct"] for r in rows)}
    if "grounding" in variant_rows and base is not None:
        res["grounding_by_group"] = grounding_by_group(base, variant_rows["grounding"],
                                                       os.path.join(out_dir, "grounding_by_group.md"))
    if "cot" in variant_rows:
        res["cot_skills"] = cot_report(variant_rows["cot"], os.path.join(out_dir, "cot_by_skill.md"))
    return res


def table_md(runs):
    """[(label, summary)] -> Markdown shaped like the paper's Table 1: one row per run, one column
    per benchmark (in %: TABLE1_METRIC's number; '(scored/total)' follows when items were
    skipped), then every MultiMedEval VQA metric per benchmark, the response categories of the
    multiple-choice benchmarks, and a robustness / instruction-following table where any run has
    those analyses."""
    names = [b for b in COLUMNS if any(b in s["benchmarks"] for _, s in runs)]
    lines = ["| Model | " + " | ".join(COLUMNS[b] for b in names) + " |", "|---" * (len(names) + 1) + "|"]

    def cell(d, metric):  # a run that could not score every item (missing images) says how many it did
        part = f" ({d['n_scored']}/{d['n']})" if d.get("n_scored", d.get("n")) != d.get("n") else ""
        return _fmt(d.get(metric)) + part
    for label, s in runs:
        cells = [cell(s["benchmarks"][b]["base"], TABLE1_METRIC.get(b, "accuracy"))
                 if "base" in s["benchmarks"].get(b, {}) else "-" for b in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    closed = [COLUMNS[b] for b in names if TABLE1_METRIC.get(b) == "closed_accuracy"]
    if closed:
        lines += ["", f"{', '.join(closed)}: MultiMedEval closed-question accuracy (yes/no questions), the "
                      "number the paper's Table 1 reports; the other columns: accuracy over all items."]
    vqa = [(label, b, s["benchmarks"][b]["base"]) for label, s in runs for b in names
           if "closed_accuracy" in s["benchmarks"].get(b, {}).get("base", {})]
    if vqa:
        lines += ["", "| Model | Benchmark | " + " | ".join(h for _, h in VQA_METRICS) + " |",
                  "|---" * (len(VQA_METRICS) + 2) + "|"]
        lines += [f"| {label} | {COLUMNS[b]} | " + " | ".join(_fmt(d.get(k)) for k, _ in VQA_METRICS) + " |"
                  for label, b, d in vqa]
    cats = [(label, b, s["benchmarks"][b]["base"]["categories"]) for label, s in runs for b in names
            if "categories" in s["benchmarks"].get(b, {}).get("base", {})]
    if cats:  # the paper's instruction-following breakdown (section 4.3), direct-letter prompt
        lines += ["", "| Model | Benchmark | Single letter % | Answer-prefixed % | CoT-style % | Other % | Invalid % |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {label} | {COLUMNS[b]} | " + " | ".join(_fmt(c.get(k)) for k in CATEGORIES) + " |"
                  for label, b, c in cats]
    extra = []
    for label, s in runs:
        for b, d in s["benchmarks"].items():
            a, base = d.get("analyses", {}), d.get("base", {})
            cells = [_fmt(a[k].get(f)) if a.get(k, {}).get("n") else "-" for k, f in (
                ("shuffle", "delta"), ("circular", "circular_accuracy"), ("rephrase", "delta"), ("grounding", "delta"))]
            invalid = _fmt(base.get("invalid_rate", base.get("yes_no_invalid_rate")))
            extra.append(f"| {label} | {COLUMNS[b]} | {invalid} | " + " | ".join(cells) + " |")
    if any(d.get("analyses") for _, s in runs for d in s["benchmarks"].values()):
        lines += ["", "| Model | Benchmark | Invalid % | Shuffle Δ | CircularEval | Rephrase Δ | Grounding Δ |",
                  "|---|---|---|---|---|---|---|"] + extra
    return "\n".join(lines) + "\n"


def compare(run_dirs):
    """Table 1 Markdown of several run directories (each with its summary.json), side by side."""
    runs = []
    for d in run_dirs:
        with open(os.path.join(d, "summary.json")) as f:
            s = json.load(f)
        runs.append((s["run"]["name"], s))
    return table_md(runs)
