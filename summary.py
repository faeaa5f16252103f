"""What a run's rows add up to: each benchmark's summary (metrics per variant, and every
analysis against the base run) and the Markdown shaped like the paper's Table 1. evaluate.py
writes both (summary.json, table.md) at the end of a run; `evaluate.py compare` puts several
runs side by side.

    python evaluate.py compare runs/base runs/trained -o table.md   # Table 1 shape, side by side
    python -m pytest -q tests/test_summary.py

- summarize: one variant of one benchmark -> MultiMedEval's aggregates (closed accuracy, open
  recall and accuracy, BLEU-1, F1), option accuracy (with a judge: rules only and rules + judge,
  the answers judged), instruction following (the rules' invalid rate, the paper's response
  categories), positional bias (chosen vs gold letters, the judge's reading where it read:
  'none' where it read no option, 'invalid' where the rules read none and no judge read it),
  accuracy per skill and per group (MMMU subject and subfield, GMAI-MMBench axes), box rate and
  IoU; answers cut by the token budget and answers the judge gave no verdict on, counted.
- analyses: each variant against the base run: shuffled options, rephrased questions and the
  grounding prompt (accuracy change, per-question flips, the same verdict and the same chosen
  option: robustness.compare_rows), CircularEval over the questions with every rotation scored,
  grounding per group with what it could not compare (grounding_by_group.md) and chain-of-thought
  answers grouped by the paper's five clinical skills (cot_by_skill.md, for reading).
- table_md / compare: one row per run and one column per benchmark, with each number's 95%
  confidence interval (wilson), then every VQA metric, the response categories and a
  robustness / instruction-following table; compare then pairs each run with the first on the
  questions both scored (paired_md: McNemar's exact test).
Pure Python over the rows' dicts: no model, no data loading.
"""
import json
import math
import os
import re
from collections import Counter, defaultdict

from answers import CATEGORIES
from robustness import chosen_letter, circular_accuracy, compare_rows, read_jsonl


# ---- What a row is grouped by --------------------------------------------------------------------
SKILLS = [  # the paper's five clinical skills (section 3.2); first matching pattern wins
    ("modality recognition",
     r"modalit|imaging (?:technique|method)|type of (?:image|scan)|kind of (?:image|scan)|sequence"),
    ("anatomical localization",
     r"\bwhere\b|locat|which (?:organ|side|part|lobe|region)|left or right|position|anatom"),
    ("disease feature interpretation",
     r"abnormal|lesion|diagnos|finding|feature|shape|size|densit|intensit|disease|patholog"),
    ("option comparison reasoning", r"which of the following|most likely|best|compar|differ"),
    ("question-image alignment", r""),
]
# the synthetic benchmark's own skill names (demo.synthetic.SKILLS) -> the paper's five
SKILL_ALIASES = {"modality": "modality recognition", "side": "anatomical localization",
                 **dict.fromkeys(("presence", "shape", "brightness", "size", "count"),
                                 "disease feature interpretation")}
# Grouping axes per benchmark: MMMU Health & Medicine's five subjects (the paper's "subfields",
# e.g. Diagnostics_and_Laboratory_Medicine) and MMMU's own finer `subfield` column (Pathology,
# Cardiology, ...), and GMAI-MMBench's official axes (the columns
# VLMEvalKit's GMAIMMBenchDataset reports accuracy by). Column names match case-insensitively.
GROUP_AXES = {"mmmu": ("subject", "subfield"),
              "gmai_mmbench": ("clinical VQA task", "department", "perceptual granularity")}
NO_VALUE = "(no value)"  # the group of the records whose cell on an axis is empty


def skill_of(record_or_row):
    """The clinical skill a question exercises: the sample's own 'skill' (row field or record
    meta) when it names one of the five or a synthetic skill, else the first SKILLS pattern that
    matches the question."""
    skill = record_or_row.get("skill") or record_or_row.get("meta", {}).get("skill")
    skill = SKILL_ALIASES.get(skill, skill)
    if skill in dict(SKILLS):
        return skill
    return next(name for name, pat in SKILLS if re.search(pat, record_or_row["question"].lower()))


def group_labels(meta):
    """{axis: value} for every GROUP_AXES axis the record's meta carries (any benchmark's)."""
    lower = {str(k).lower(): v for k, v in (meta or {}).items()}
    return {a: str(lower[a.lower()]) for axes in GROUP_AXES.values() for a in axes
            if lower.get(a.lower()) not in (None, "")}


def missing_axes(benchmark, records):
    """The GROUP_AXES columns a benchmark's records lack (their grouping is then not reported)."""
    return [a for a in GROUP_AXES.get(benchmark, ()) if not any(a in group_labels(r.get("meta")) for r in records)]


# ---- One variant's rows -> its metrics -----------------------------------------------------------
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


def wilson(k, n, z=1.96):
    """The 95% Wilson score interval (lo, hi) of a proportion k/n: on a few hundred items a
    Table 1 accuracy is uncertain by several points, which a comparison should show. None for n 0."""
    if not n:
        return None
    p, q = k / n, z * z / n
    mid, half = (p + q / 2) / (1 + q), z * math.sqrt(p * (1 - p) / n + q / (4 * n)) / (1 + q)
    return (max(0.0, mid - half), min(1.0, mid + half))


def mcnemar(b, c):
    """Exact two-sided McNemar p-value of paired right/wrong verdicts: b questions only the first
    run got right, c only the second (a binomial test of b against b + c at one half)."""
    n = b + c
    if not n:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def summarize(rows):
    """Metrics of one variant's rows; rows with correct=None (image missing) are counted apart."""
    scored = [r for r in rows if r.get("correct") is not None]
    s = {"n": len(rows), "n_scored": len(scored), "n_missing_image": sum("missing_image" in r["flags"] for r in rows),
         "n_error": sum("error" in r["flags"] for r in rows),
         "accuracy": _mean(bool(r["correct"]) for r in scored),
         "accuracy_rules": _mean(bool(r.get("correct_rules", r["correct"])) for r in scored),
         "accuracy_ci95": wilson(sum(bool(r["correct"]) for r in scored), len(scored))}
    vqa, mc = [r for r in scored if r["kind"] == "vqa"], [r for r in scored if r["kind"] == "mc"]
    if vqa:  # MultiMedEval's metric names
        closed, open_ = [r for r in vqa if r["closed"]], [r for r in vqa if not r["closed"]]
        s.update(n_closed=len(closed), n_open=len(open_), closed_accuracy=_mean(r["correct"] for r in closed),
                 closed_accuracy_ci95=wilson(sum(bool(r["correct"]) for r in closed), len(closed)),
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
                 **{k: n for k in ("judge_unreadable", "judge_error") if (n := sum(k in r["flags"] for r in mc))},
                 chosen_letters=dict(sorted(Counter(chosen_letter(r) or ("none" if "judged" in r["flags"]
                                                                         else "invalid") for r in mc).items())),
                 gold_letters=dict(sorted(Counter(r["gold"] for r in mc).items())))
    if any(r.get("groups") for r in scored):
        s["by_group"] = by_group(scored)
    if any("skill" in r for r in scored):  # per-skill accuracy where the benchmark names skills
        s["by_skill"] = {k: _accuracy(g) for k, g in sorted(_by(scored, lambda r: r.get("skill", "-")).items())}
    if any("box" in r for r in scored):
        s["box_rate"] = _mean(r.get("box") is not None for r in scored)
        s["mean_iou"] = _mean(r["iou"] for r in scored if "iou" in r)
    return s


def by_group(rows):
    """{axis: {value: {"n", "accuracy"}}} over the rows' group labels. A row with no value on an
    axis other rows have (an empty department cell) counts under NO_VALUE: each axis adds up to
    every row."""
    axes = sorted({a for r in rows for a in r.get("groups", {})})
    return {a: {v: _accuracy(g) for v, g in sorted(_by(rows, lambda r: r.get("groups", {}).get(a, NO_VALUE)).items())}
            for a in axes}


# ---- Each variant against the base run -----------------------------------------------------------
def analyses(variant_rows, out_dir):
    """{variant: rows} of one benchmark -> each analysis against the base variant."""
    base, res = variant_rows.get("base"), {}
    for v in ("shuffle", "rephrase", "grounding"):  # shuffling only touches multiple-choice rows
        if v in variant_rows and base is not None:
            res[v] = compare_rows([r for r in base if v != "shuffle" or r.get("kind") == "mc"], variant_rows[v])
    if "circular" in variant_rows:  # as VLMEvalKit, only questions with every rotation scored; the others counted
        incomplete = {r["base_id"] for r in variant_rows["circular"] if r.get("correct") is None}
        rows = [r for r in variant_rows["circular"] if r["base_id"] not in incomplete]
        res["circular"] = {"n": len({r["base_id"] for r in rows}), "n_incomplete": len(incomplete),
                           "circular_accuracy": circular_accuracy(rows) if rows else None,
                           "rotation_accuracy": _mean(r["correct"] for r in rows)}
    if "grounding" in variant_rows and base is not None:
        res["grounding_by_group"] = grounding_by_group(base, variant_rows["grounding"],
                                                       os.path.join(out_dir, "grounding_by_group.md"))
    if "cot" in variant_rows:
        res["cot_skills"] = cot_report(variant_rows["cot"], os.path.join(out_dir, "cot_by_skill.md"))
    return res


def grounding_by_group(base, grounding, path):
    """Accuracy with and without the grounding prompt per group value (and overall), on the
    questions both runs scored; also written as Markdown to `path`. A question's groups come from
    whichever of its rows has them (a failed row, missing image or backend error, has none);
    groups with no question compared are left out, and overall's n_not_compared counts the
    questions not compared (in one run only, or unscored in either)."""
    labels, ids = {}, {r["base_id"] for r in base + grounding}
    for r in base + grounding:
        if r.get("groups"):
            labels.setdefault(r["base_id"], r["groups"])

    def compared(keep):  # compare_rows on the questions `keep` picks, and how many of them it could not compare
        b, g = [r for r in base if keep(r["base_id"])], [r for r in grounding if keep(r["base_id"])]
        c = compare_rows(b, g)
        return {**c, "n_not_compared": len({r["base_id"] for r in b + g}) - c["n"]}
    res = {"overall": {"all": compared(lambda i: True)}}
    for axis in sorted({a for g in labels.values() for a in g}):
        value = {i: labels.get(i, {}).get(axis, NO_VALUE) for i in ids}
        groups = {v: compared(lambda i: value[i] == v) for v in sorted(set(value.values()))}
        res[axis] = {v: c for v, c in groups.items() if c["n"]}
    everything = res["overall"]["all"]
    total = everything["n"] + everything["n_not_compared"]
    lines = ["# Accuracy without and with the grounding prompt", "",
             f"{everything['n']} of {total} questions compared; {everything['n_not_compared']} not (in one run only, "
             "or unscored in either). n: a group's questions compared, '2 of 3' where some were not.", "",
             "| axis | group | n | without | with | Δ |", "|---|---|---|---|---|---|"]
    for axis, groups in res.items():
        for v, c in groups.items():
            if c["n"]:
                n = f"{c['n']} of {c['n'] + c['n_not_compared']}" if c["n_not_compared"] else c["n"]
                lines.append(f"| {axis} | {v} | {n} | {_fmt(c['accuracy_base'])} | "
                             f"{_fmt(c['accuracy_variant'])} | {_fmt(c['delta'])} |")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    out = {axis: {v: {k: c.get(k) for k in ("n", "accuracy_base", "accuracy_variant", "delta")}
                  for v, c in groups.items()} for axis, groups in res.items()}
    out["overall"]["all"]["n_not_compared"] = everything["n_not_compared"]
    return out


def cot_report(rows, path):
    """Chain-of-thought samples grouped by clinical skill, for reading (Markdown at `path`, at
    most 20 samples a skill); returns each skill's count and accuracy."""
    groups = _by([r for r in rows if r.get("correct") is not None], skill_of)
    res = {name: _accuracy(groups.get(name, [])) for name, _ in SKILLS}
    lines = ["# Chain-of-thought samples by clinical skill", ""]
    for name, _ in SKILLS:
        lines += [f"## {name} ({res[name]['n']} samples, accuracy {_fmt(res[name]['accuracy'])})", ""]
        for r in groups.get(name, [])[:20]:
            judged = f", judge {r['judge_parsed'] or 'none'}" if "judged" in r["flags"] else ""
            lines += [f"**{r['id']}** gold {r['gold']}, parsed {r['parsed']}{judged}", "",
                      "> " + r["response"].replace("\n", "\n> "), ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return res


# ---- Tables --------------------------------------------------------------------------------------
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


def table_md(runs):
    """[(label, summary)] -> Markdown shaped like the paper's Table 1: one row per run, one column
    per benchmark (in %: TABLE1_METRIC's number; '(scored/total)' follows when items were
    skipped), then every MultiMedEval VQA metric per benchmark, the response categories of the
    multiple-choice benchmarks, the accuracy with the rules only and with the judge where a judge
    read answers, and a robustness / instruction-following table where any run has those
    analyses. Where any run's answers were cut by the token budget, a 'Cut by budget %' column
    follows each Invalid % and a note says what Invalid % holds of them; CircularEval says how
    many questions it left out for an unscored rotation."""
    names = [b for b in COLUMNS if any(b in s["benchmarks"] for _, s in runs)]
    head = ["| Model | " + " | ".join(COLUMNS[b] for b in names) + " |", "|---" * (len(names) + 1) + "|"]

    def table1_row(label, s, show):  # each benchmark's Table 1 number (its base summary, its metric) by `show`
        cells = [show(s["benchmarks"][b]["base"], TABLE1_METRIC.get(b, "accuracy"))
                 if "base" in s["benchmarks"].get(b, {}) else "-" for b in names]
        return f"| {label} | " + " | ".join(cells) + " |"

    def cell(d, metric):  # a run that could not score every item (missing images) says how many it did
        part = f" ({d['n_scored']}/{d['n']})" if d.get("n_scored", d.get("n")) != d.get("n") else ""
        return _fmt(d.get(metric)) + part

    def interval(d, metric):  # "80.11-85.62": the 95% Wilson interval of the Table 1 number
        ci = d.get(metric + "_ci95")
        return f"{_fmt(ci[0])}-{_fmt(ci[1])}" if ci else "-"
    lines = head + [table1_row(label, s, cell) for label, s in runs]
    closed = [COLUMNS[b] for b in names if TABLE1_METRIC.get(b) == "closed_accuracy"]
    if closed:
        lines += ["", f"{', '.join(closed)}: MultiMedEval closed-question accuracy (yes/no questions), the "
                      "number the paper's Table 1 reports; the other columns: accuracy over all items."]
    if any(s["benchmarks"].get(b, {}).get("base", {}).get("accuracy_ci95") for _, s in runs for b in names):
        lines += ["", "95% confidence intervals (Wilson) of the numbers above:", ""] + head
        lines += [table1_row(label, s, interval) for label, s in runs]
    vqa = [(label, b, s["benchmarks"][b]["base"]) for label, s in runs for b in names
           if "closed_accuracy" in s["benchmarks"].get(b, {}).get("base", {})]
    if vqa:
        lines += ["", "| Model | Benchmark | " + " | ".join(h for _, h in VQA_METRICS) + " |",
                  "|---" * (len(VQA_METRICS) + 2) + "|"]
        lines += [f"| {label} | {COLUMNS[b]} | " + " | ".join(_fmt(d.get(k)) for k, _ in VQA_METRICS) + " |"
                  for label, b, d in vqa]
    # answers the token budget cut off mostly read as invalid: shown next to Invalid %, not hidden in it
    cut = any(d.get("base", {}).get("n_truncated") for _, s in runs for d in s["benchmarks"].values())
    cut_head, cut_rule = (" Cut by budget % |", "---|") if cut else ("", "")

    def cut_cell(d):  # summarize gives the rate only where some answer was cut
        return f" {_fmt(d.get('truncated_rate', 0.0 if d.get('n_scored') else None))} |" if cut else ""
    cats = [(label, b, s["benchmarks"][b]["base"]) for label, s in runs for b in names
            if "categories" in s["benchmarks"].get(b, {}).get("base", {})]
    if cats:  # the paper's instruction-following breakdown (section 4.3), direct-letter prompt
        lines += ["", "| Model | Benchmark | Single letter % | Answer-prefixed % | CoT-style % | Other % | Invalid % |"
                  + cut_head, "|---|---|---|---|---|---|---|" + cut_rule]
        lines += [f"| {label} | {COLUMNS[b]} | " + " | ".join(_fmt(d["categories"].get(k)) for k in CATEGORIES) + " |"
                  + cut_cell(d) for label, b, d in cats]
    judged = [(label, b, s["benchmarks"][b]["base"]) for label, s in runs for b in names
              if any(s["benchmarks"].get(b, {}).get("base", {}).get(k) for k in ("judged", "judge_unreadable",
                                                                                 "judge_error"))]
    if judged:  # after VLMEvalKit's protocol: both accuracies; the columns above give the judge's
        lines += ["", "| Model | Benchmark | Accuracy, rules only | Accuracy, rules + judge | Judged answers |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label} | {COLUMNS[b]} | {_fmt(d.get('accuracy_rules'))} | {_fmt(d.get('accuracy'))} | "
                  f"{d['judged']}{_judge_misses(d)} |" for label, b, d in judged]
    extra, incomplete = [], False
    for label, s in runs:
        for b, d in s["benchmarks"].items():
            a, base = d.get("analyses", {}), d.get("base", {})
            cells = [_fmt(a[k].get(f)) if a.get(k, {}).get("n") else "-" for k, f in (
                ("shuffle", "delta"), ("circular", "circular_accuracy"), ("rephrase", "delta"), ("grounding", "delta"))]
            if a.get("circular", {}).get("n_incomplete"):
                cells[1] += f" ({a['circular']['n_incomplete']} incomplete)"
                incomplete = True
            invalid = _fmt(base.get("invalid_rate", base.get("yes_no_invalid_rate")))
            extra.append(f"| {label} | {COLUMNS[b]} | {invalid} |{cut_cell(base)} " + " | ".join(cells) + " |")
    analysed = any(d.get("analyses") for _, s in runs for d in s["benchmarks"].values())
    if analysed:
        lines += ["", "| Model | Benchmark | Invalid % |" + cut_head + " Shuffle Δ | CircularEval | Rephrase Δ | "
                  "Grounding Δ |", "|---|---|---|" + cut_rule + "---|---|---|---|"] + extra
    if incomplete:
        lines += ["", "CircularEval: questions right in every rotation, of those with every rotation scored; "
                      "'(k incomplete)': k questions left out, a rotation unscored (missing image, backend error)."]
    if cut and (cats or analysed):
        lines += ["", "Cut by budget %: answers the token budget (--max-new-tokens) cut off, of all scored answers. "
                      "Invalid % includes those of them no answer could be read from; summary.json gives the "
                      "accuracy and invalid rate without them (accuracy_complete, invalid_rate_complete)."]
    return "\n".join(lines) + "\n"


def _judge_misses(d):
    """' (2 unreadable, 1 failed)': the answers sent to the judge that it gave no verdict on."""
    misses = [f"{d[k]} {w}" for k, w in (("judge_unreadable", "unreadable"), ("judge_error", "failed")) if d.get(k)]
    return f" ({', '.join(misses)})" if misses else ""


def compare(run_dirs):
    """Table 1 Markdown of several run directories (each with its summary.json), side by side,
    what made each run (runs_md), then each later run against the first on the questions both
    scored (paired_md)."""
    runs = []
    for d in run_dirs:
        with open(os.path.join(d, "summary.json")) as f:
            s = json.load(f)
        runs.append((s["run"]["name"], s))
    return table_md(runs) + runs_md(runs) + paired_md(run_dirs, [label for label, _ in runs])


def runs_md(runs):
    """What made each run (checkpoint, backend, dtype: 'default' for the backend's own, judge, code
    version), and a note where runs read their answers differently: a benchmark a judge read in
    one run and not in another (the rules alone read both alike), or code of different versions
    (each row was read by the code that scored it)."""
    lines = ["", "| Model | Checkpoint | Backend | dtype | Judge | Code |", "|---|---|---|---|---|---|"]
    for label, s in runs:
        r = s.get("run", {})
        judge = f"{r['judge_model']} ({r.get('judge_backend', 'native')})" if r.get("judge_model") else "-"
        lines.append(f"| {label} | {r.get('model', '-')} | {r.get('backend', '-')} | {r.get('dtype') or 'default'} | "
                     f"{judge} | {str(r.get('code_version', '-'))[:12]} |")
    for b in COLUMNS:
        ran = [(label, s["benchmarks"][b]["base"]) for label, s in runs if "base" in s["benchmarks"].get(b, {})]
        judged = [lb for lb, d in ran if d.get("judged") or d.get("judge_unreadable") or d.get("judge_error")]
        alone = [lb for lb, _ in ran if lb not in judged]
        if judged and alone:
            lines += ["", f"{COLUMNS[b]}: a judge read answers in {', '.join(judged)} and none in {', '.join(alone)}: "
                          f"set {', '.join(alone)}'s Table 1 number against {', '.join(judged)}'s 'Accuracy, rules "
                          "only' above; the paired comparison reads both by the rules."]
    if len({v for _, s in runs if (v := s.get("run", {}).get("code_version"))}) > 1:  # older runs name none
        lines += ["", "The runs were scored by different versions of this code; each row was read by the version "
                      "that scored it."]
    return "\n".join(lines) + "\n"


def paired_md(run_dirs, labels):
    """Each later run against the first, per benchmark, on the questions both scored (their base
    rows, <run>/<benchmark>/base.jsonl), by the Table 1 metric (for VQA-RAD, SLAKE and Path-VQA
    the yes/no questions): the change, the questions only one run got right, and McNemar's exact
    p-value, the test for two models answering the same questions. Where a judge read answers of
    one run and not of the other, both are compared by the rules' reading ('rules only')."""
    lines = []
    for d, label in zip(run_dirs[1:], labels[1:]):
        for b in COLUMNS:
            first, other = (os.path.join(r, b, "base.jsonl") for r in (run_dirs[0], d))
            if not (os.path.exists(first) and os.path.exists(other)):
                continue
            closed = TABLE1_METRIC.get(b) == "closed_accuracy"
            rows = [[r for r in read_jsonl(p) if r.get("correct") is not None and (not closed or r.get("closed"))]
                    for p in (first, other)]
            judged = [any("judged" in r.get("flags", ()) for r in rs) for rs in rows]
            key = "correct_rules" if judged[0] != judged[1] else "correct"  # read alike, or not at all
            a, o = ({r["id"]: bool(r.get(key, r["correct"])) for r in rs} for rs in rows)
            ids = set(a) & set(o)
            if not ids:
                continue
            only_a, only_o = sum(a[i] and not o[i] for i in ids), sum(o[i] and not a[i] for i in ids)
            delta = (sum(o[i] for i in ids) - sum(a[i] for i in ids)) / len(ids)
            name = COLUMNS[b] + (" (rules only)" if key == "correct_rules" else "")
            lines.append(f"| {name} | {label} vs {labels[0]} | {len(ids)} | {100 * delta:+.2f} | {only_o} | "
                         f"{only_a} | {mcnemar(only_a, only_o):.3g} |")
    if not lines:
        return ""
    head = ["", "Each run against the first, on the questions both scored (paired; McNemar's exact test):", "",
            "| Benchmark | Runs | n | Δ (points) | Right only in the later run | Right only in the first | p |",
            "|---|---|---|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"
