"""Robustness of a model's answers (the paper's robustness analyses): the same questions asked
again with the options shuffled, in every cyclic rotation (CircularEval) and reworded, and what
changes against the first answers. evaluate.py asks these questions (`--shuffle`, `--circular`,
`--rephrase`) and scores them; summary.analyses reports the results.

    python evaluate.py run --model CKPT --benchmark pmc_vqa --data-root DATA/PMC-VQA --out runs/base \
        --shuffle --circular --rephrase
    python -m pytest -q tests/test_robustness.py

- Shuffled and rotated options (permute_options): option i holds the text of another letter and
  the gold letter follows its text; ids gain '#shuffle' / '#rotK' and meta['base_id'] keeps the
  question's own id, so each answer is compared with the same question's first answer
  (compare_rows: accuracy change, per-question flips, the same verdict and the same chosen option).
- CircularEval (MMBench, Liu et al. 2023): every rotation of the options is asked, and a
  question counts right only when every rotation of it was answered right (circular_accuracy).
- Rephrased questions: the dataset's own rewording (VQA-RAD's question_rephrase), a model's
  (checked by check_rephrasing) or a template's, cached in a JSONL file a reader can inspect
  and reuse (collect_rephrasings).
"""
import json
import os
import random
import re
from collections import defaultdict

from prompts import REPHRASE_PROMPT, REPHRASE_TEMPLATES


# ---- Shuffled options and CircularEval -----------------------------------------------------------
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
    that leaves the question as it was (the same order, or the same texts where two options
    share one) is replaced by the first rotation that changes it (two options: swapped), so
    every shuffled question really is reordered and the accuracy change measures reorderings."""
    keys = list(record["options"])
    order = keys[:]
    random.Random(f"{seed}:{record['id']}").shuffle(order)
    reads = [record["options"][k] for k in keys]  # the question as it reads, option by option
    if [record["options"][k] for k in order] == reads:
        turns = (keys[i:] + keys[:i] for i in range(1, len(keys)))
        order = next((o for o in turns if [record["options"][k] for k in o] != reads), order)  # else all alike
    return permute_options(record, order, "shuffle")


def rotate_records(record):
    """All cyclic rotations of the options (MMBench CircularEval); rotation 0 is the original."""
    keys = list(record["options"])
    return [permute_options(record, keys[k:] + keys[:k], f"rot{k}") for k in range(len(keys))]


def circular_accuracy(rows):
    """CircularEval (MMBench): a question counts right only when every rotation of it was right."""
    by_q = defaultdict(list)
    for r in rows:
        by_q[r["base_id"]].append(bool(r["correct"]))
    return sum(all(v) for v in by_q.values()) / len(by_q) if by_q else 0.0


# ---- Rephrased questions -------------------------------------------------------------------------
def template_rephrasing(question):
    """A rule-based rewording of a question (REPHRASE_TEMPLATES): 'What is the organ?' -> 'Can you
    identify the organ?'; anything else gets 'Based on the image, ...'. Leading image tags (MMMU's
    '<image 1> What is ...?') are set aside and put back in front: they are not part of the wording."""
    tags, q = (g.strip() for g in re.match(r"((?:\s*<image(?:\s*\d+)?>)*)(.*)$", question, re.S).groups())
    if not q:  # nothing but tags: the whole question is what there is to reword
        tags, q = "", question.strip()
    for pattern, form in REPHRASE_TEMPLATES:
        m = re.match(pattern, q, re.I | re.S)
        if m:
            rest = m.group(1)
            q = form.format(rest if pattern != r"^(.+)$" else rest[:1].lower() + rest[1:])
            return f"{tags} {q}" if tags else q


def _words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def _names(text, option):
    """Does `text` name the option text as whole words ('CT' is not in 'picture' or 'structure')?"""
    option = str(option or "").strip()
    return bool(option) and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", text, re.I) is not None


# what a model writes before the question itself: 'Sure! Here is the rephrased question:', 'Question:'
_LEAD_IN = re.compile(r"^(?:(?:sure|okay|ok|certainly)\b[!.,]?\s*)?(?:here(?:'s|’s|\s+is)\s+)?(?:(?:the|a|my)\s+)?"
                      r"(?:(?:rephrased|reworded|paraphrased|revised)(?:\s+(?:version|question))?"
                      r"(?:\s+of\s+the\s+question)?|question)\s*:\s*", re.I)
_QUOTES = " \t\n\"'`“”‘’"


def clean_rephrasing(text):
    """A model's rephrasing without what surrounds the question: ** markdown, quotes, leading lines
    that end with ':' ('Sure! Here it is:') and a lead-in such as 'Rephrased question:'. Only those
    lead-ins are cut: a question's own colon ('Regarding the scan: which organ ...?') stays."""
    lines = [line for line in str(text or "").replace("**", "").splitlines() if line.strip()]
    while len(lines) > 1 and lines[0].strip().endswith(":"):
        lines.pop(0)
    return _LEAD_IN.sub("", "\n".join(lines).strip(_QUOTES), count=1).strip(_QUOTES)


# words that turn a question into its opposite ('Which is NOT a symptom?', '... EXCEPT:')
_NEGATION = re.compile(r"\b(?:not|no|never|none|nor|neither|cannot|except|least|false|untrue|incorrect|wrong)\b"
                       r"|n['’]t\b", re.I)


def check_rephrasing(question, candidate, options=None):
    """(ok, reason) for a rephrased question (after clean_rephrasing): not empty, not the same
    words, still a question (ends with '?'), as many negations and exceptions as the question
    (without the 'NOT' of 'Which is NOT a symptom?' or the 'EXCEPT' of '... EXCEPT:' another option
    is the answer), no option lines or option text the question did not already contain (the
    options stay as they are and the answer must not leak), every number kept, not rambling.
    Whether it means the same cannot be checked by rule: the cached file is there to read."""
    c = clean_rephrasing(candidate)
    if not c:
        return False, "empty"
    if _words(c) == _words(question):
        return False, "unchanged"
    if not c.endswith("?"):
        return False, "not_a_question"
    if len(_NEGATION.findall(c)) != len(_NEGATION.findall(question)):  # 'is not' for 'isn't' is fine
        return False, "changed_negation"
    if re.search(r"^\s*\(?[A-J][.):]\s", c, re.M):
        return False, "lists_options"
    if any(_names(c, t) and not _names(question, t) for t in (options or {}).values()):
        return False, "names_an_option"
    if set(re.findall(r"\d+(?:\.\d+)?", question)) - set(re.findall(r"\d+(?:\.\d+)?", c)):
        return False, "changed_numbers"
    if len(c.split()) > 3 * len(question.split()) + 10:
        return False, "too_long"
    return True, "ok"


def collect_rephrasings(records, rephrase_file=None, cache=None, backend=None, generate=False, seed=0):
    """{id: rephrased question} and {id: where it came from}. First wins: a --rephrase-file line
    ({"id", "question"}); the newest line of `cache` (an earlier run's; not a template written for
    want of a model when a model is asked now); the record's own rephrasing
    (VQA-RAD's question_rephrase, whose placeholder 'NULL' means none); with `generate`, for each
    multiple-choice record: `backend`'s rephrasing (REPHRASE_PROMPT), without its lead-in
    (clean_rephrasing), when check_rephrasing passes it, else template_rephrasing. Generated ones are
    appended to `cache` as {"id", "original", "question", "source", "check"} lines (with the raw
    "model_output" where it was cut or refused), for the user to read and reuse as a --rephrase-file."""
    found, source, asking = {}, {}, generate and backend is not None
    given = [d for d in read_jsonl(rephrase_file) if d.get("question")]
    cached = [d for d in read_jsonl(cache) if d.get("question") and not (asking and d.get("check") == "no_model")]
    for d, tag in [(d, "file") for d in given] + [(d, "cache") for d in cached[::-1]]:  # first wins
        if d["id"] not in found:
            found[d["id"]], source[d["id"]] = d["question"].strip(), d.get("source", tag)
    for r in records:
        own = (r.get("meta", {}).get("question_rephrase") or "").strip()
        if r["id"] not in found and own and own.upper() != "NULL":
            found[r["id"]], source[r["id"]] = own, "dataset"
    todo = [r for r in records if generate and r.get("options") and r["id"] not in found]
    requests = [{"messages": [{"role": "user", "content": REPHRASE_PROMPT.format(question=r["question"])}],
                 "images": []} for r in todo]
    asked = backend.generate(requests, max_new_tokens=96, temperature=0.0, seed=seed) \
        if todo and backend is not None else [[None]] * len(todo)
    lines = []
    for r, out in zip(todo, asked):
        said = clean_rephrasing(out[0]) if out[0] is not None else None  # checked and kept without its lead-in
        ok, why = check_rephrasing(r["question"], said, r["options"]) if said is not None else (False, "no_model")
        q, src = (said, "model") if ok else (template_rephrasing(r["question"]), "template")
        found[r["id"]], source[r["id"]] = q, src
        lines.append({"id": r["id"], "original": r["question"], "question": q, "source": src, "check": why,
                      **({"model_output": out[0]} if out[0] is not None and out[0] != q else {})})
    if cache and lines:
        with open(cache, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return found, source


def read_jsonl(path):
    """The JSON lines of a file ([] when there is none)."""
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rephrase_records(records, rephrasings):
    """Copies of the records that have a rephrasing ({id: question}), asking it instead."""
    return [{**r, "id": r["id"] + "#rephrase", "question": rephrasings[r["id"]],
             "meta": {**r.get("meta", {}), "base_id": r["id"]}} for r in records if r["id"] in rephrasings]


# ---- Each variant against the first answers ------------------------------------------------------
def chosen_letter(row):
    """The letter a multiple-choice row chose as finally read: the judge's where it read the
    answer (None for its 'Z'), else the rules'."""
    return row.get("judge_parsed") if "judged" in row.get("flags", ()) else row.get("parsed")


def _chosen(row):
    """The text of the option a multiple-choice row chose (chosen_letter), so a shuffled row's
    letter reads as the same answer; None for open questions and no answer."""
    letter, options = chosen_letter(row), row.get("options") or {}
    return str(options[letter]).strip() if letter in options else None


def compare_rows(base, other):
    """Accuracy on the questions both runs scored, and per-question flips. 'consistency': the share
    of them given the same verdict (right or wrong) both times; 'same_answer': the share where both
    runs chose the same option, by its text (B wrong then D wrong is a change of answer), counted
    only over the questions where both rows chose an option (open questions and answers with no
    option read, by the rules or by the judge where it read, are left out: 'n_same_answer' of
    'n'); None when no question qualifies. Both use each row's final reading: where a judge read
    one answer of a pair and not the other, two readers are compared."""
    b, o = ({r["base_id"]: bool(r["correct"]) for r in rows if r.get("correct") is not None} for rows in (base, other))
    ids = sorted(set(b) & set(o))
    if not ids:
        return {"n": 0}
    acc_b, acc_o = sum(b[i] for i in ids) / len(ids), sum(o[i] for i in ids) / len(ids)
    cb, co = ({r["base_id"]: _chosen(r) for r in rows if r.get("correct") is not None} for rows in (base, other))
    both = [i for i in ids if cb[i] is not None and co[i] is not None]
    return {"n": len(ids), "accuracy_base": acc_b, "accuracy_variant": acc_o, "delta": acc_o - acc_b,
            "consistency": sum(b[i] == o[i] for i in ids) / len(ids),  # per question: the same verdict both times
            "same_answer": sum(cb[i] == co[i] for i in both) / len(both) if both else None,
            "n_same_answer": len(both),
            "right_to_wrong": [i for i in ids if b[i] and not o[i]],
            "wrong_to_right": [i for i in ids if o[i] and not b[i]]}
