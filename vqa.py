"""Scoring a short answer as MultiMedEval does (VQA-RAD, SLAKE, Path-VQA, open PMC-VQA), the
instruction-following flag of a yes/no answer, and the bounding box a grounded answer gives. Only
the standard library: this file can be copied alone.

    python -c "from vqa import vqa_scores; print(vqa_scores('Yes, there is.', 'yes'))"
    python -m pytest -q tests/test_vqa.py

Where each rule comes from:
- clean_text, bleu1, vqa_scores, is_yes_no: MultiMedEval's VQA scorer (multimedeval/utils.py
  clean_str, task_families.py VQA.evaluate, with VQA-v2's answer normalization and torchmetrics'
  BLEUScore(n_gram=1)), the scorer the paper used for VQA-RAD, SLAKE and Path-VQA.
  yes_no_invalid is ours: the instruction-following flag of a yes/no answer.
- parse_box, strip_boxes, box_iou: the box forms Qwen2.5-VL ('[x1, y1, x2, y2]', also as JSON
  "bbox_2d") and Qwen2-VL ('<|box_start|>(x1,y1),(x2,y2)<|box_end|>') write, for the grounding
  prompt (prompts.GROUNDING_PROMPT).
"""
import math
import re
from collections import Counter

# ---- MultiMedEval-style VQA scoring --------------------------------------------------------------
# MultiMedEval utils.clean_str and task_families.VQA.evaluate, which use
# the VQA-v2 answer normalization
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!"]  # VQA-v2 list: note ':', "'", '*' and '.' are not in it
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# VQA-v2 contraction table: each written form is reached from every spelling that lacks exactly
# one of its apostrophes ("dont" -> "don't", "couldnt've" / "couldn'tve" -> "couldn't've").
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't "
    "she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd "
    "someone'd've someone'll someone's something'd something'd've something'll that's there'd "
    "there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've "
    "we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've "
    "who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll "
    "y'all'd've you'd you'd've you'll you're you've").split()
_CONTRACTIONS = {w[:i] + w[i + 1:]: w for w in _CONTRACTED for i, ch in enumerate(w) if ch == "'"}
_CONTRACTIONS["somebody'd"] = "somebodyd"  # sic, an inverted entry in the VQA-v2 table


def clean_text(text):
    """VQA-v2 answer normalization exactly as MultiMedEval applies it: lowercase; each listed
    punctuation mark is deleted where it touches a space (or anywhere, if the text has a
    digit,digit comma) and becomes a space otherwise; '.' not followed by a digit is deleted (at
    most 32 of them: the reference passes re.UNICODE (=32) as the count); number words
    none/zero..ten -> digits; articles dropped; contractions restored; remaining commas removed."""
    text = text.lower()
    delete_all = re.search(r"\d,\d", text) is not None
    out = text
    for p in _PUNCT:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or delete_all) else " ")
    # the reference regex (?!<=\d)(\.)(?!\d) has a look-ahead where a look-behind was meant, so it
    # deletes every period not followed by a digit, '3.' included
    out = re.sub(r"\.(?!\d)", "", out, count=32)
    words = [_NUMBERS.get(w, w) for w in out.split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words).replace(",", "")


def bleu1(candidate, reference):
    """Unigram BLEU of one whitespace-tokenized candidate against one reference (torchmetrics
    BLEUScore(n_gram=1), as MultiMedEval): clipped unigram precision times the brevity penalty
    exp(1 - r/c) when c <= r (c, r: candidate, reference lengths), 1 when c > r; 0 if nothing
    matches or the candidate is empty."""
    cand, ref = candidate.split(), reference.split()
    ref_counts = Counter(ref)
    matches = sum(min(n, ref_counts[w]) for w, n in Counter(cand).items())
    if matches == 0:  # nothing in common, or an empty text
        return 0.0
    bp = 1.0 if len(cand) > len(ref) else math.exp(1 - len(ref) / len(cand))
    return bp * matches / len(cand)


def yes_no_invalid(response):
    """Does a response to a yes/no question fail to answer it? Read on the scorer's tokens
    (clean_text): invalid when it gives neither 'yes' nor 'no'/'not' ('Maybe.'; '**Yes**', which
    the scorer cannot read either), or when it gives both as a hedge: not opening with its answer
    ('It could be yes or no.') or offering the two side by side ('Yes and no.', 'Yes/No'). The
    scorer counts a hedge right whatever the gold, so it is flagged here. 'Yes, there is no
    fracture.' opens with its answer and is valid."""
    words = clean_text(response).split()
    yes, no = "yes" in words, bool({"no", "not"} & set(words))
    if yes and no:
        side_by_side = re.search(r"\b(yes|no) (?:(?:or|and) )?(?!\1\b)(?:yes|no)\b", " ".join(words))
        return words[0] not in ("yes", "no") or side_by_side is not None
    return not (yes or no)


def is_yes_no(gold):
    """MultiMedEval prefixes the yes/no instruction when the gold answer is exactly 'yes' or
    'no'. It compares the raw answer: the HF copies of VQA-RAD and PathVQA it reads are lowercase,
    while SLAKE writes 'Yes'/'No' and so never gets the prefix there. We compare the gold as
    vqa_scores cleans it (the raw VQA-RAD JSON also writes 'Yes'; a 'Yes.' is scored as a yes/no
    question), so every question scored as yes/no is asked as one."""
    return clean_text(gold.lower().strip()) in ("yes", "no")


def vqa_scores(prediction, gold):
    """MultiMedEval VQA scores of one prediction. Tokens are the sets of words of the cleaned
    texts. closed: the cleaned gold is 'yes' or 'no' (not the dataset's answer_type). correct:
    for closed items the gold token is among the prediction's tokens, where 'not' also counts
    for 'no' (the reference adds 'not' to the gold set {'no'} and accepts a recall >= 0.4, i.e.
    either word); for open items recall >= 0.75. recall = |P & G| / |G|, precision = |P & G| /
    |P|, f1 their harmonic mean (the reference adds 1e-8 to the denominator: < 1e-8 apart),
    bleu1 on the cleaned strings."""
    clean_gold, clean_pred = clean_text(gold.lower().strip()), clean_text(prediction)
    g, p = set(clean_gold.split()), set(clean_pred.split())
    common = len(g & p)
    precision = common / len(p) if p else 0.0
    recall = common / len(g) if g else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    closed = clean_gold in ("yes", "no")
    accept = {"no", "not"} if clean_gold == "no" else {"yes"}
    correct = bool(accept & p) if closed else recall >= 0.75
    return {"closed": closed, "correct": correct, "recall": recall, "precision": precision,
            "f1": f1, "bleu1": bleu1(clean_pred, clean_gold)}


# ---- Bounding boxes of grounded answers ----------------------------------------------------------
_NUM = r"(-?\d+(?:\.\d+)?)"
_BOXES = [re.compile(r"\[\s*" + r"\s*,\s*".join([_NUM] * 4) + r"\s*\]"),  # [x1, y1, x2, y2]
          # Qwen2-VL's (x1,y1),(x2,y2)
          re.compile(r"\(\s*{0}\s*,\s*{0}\s*\)\s*,?\s*(?:to\s*)?\(\s*{0}\s*,\s*{0}\s*\)".format(_NUM))]


def parse_box(text):
    """The last bounding box in `text` as (x1, y1, x2, y2) with x1 <= x2, y1 <= y2, or None.
    Reads '[x1, y1, x2, y2]' (also inside Qwen2.5-VL's JSON "bbox_2d") and '(x1,y1),(x2,y2)'."""
    found = [(m.start(), [float(v) for v in m.groups()]) for pat in _BOXES for m in pat.finditer(text)]
    if not found:
        return None
    x1, y1, x2, y2 = max(found)[1]
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def strip_boxes(text):
    """The text without its boxes (their numbers must not reach the answer parser or scorer)."""
    for pat in _BOXES:
        text = pat.sub(" ", text)
    return re.sub(r"<\|box_(?:start|end)\|>", " ", text)


def box_iou(a, b):
    """Intersection over union of two (x1, y1, x2, y2) boxes with x1 <= x2 and y1 <= y2 (as
    parse_box returns them), in the same pixel coordinates; 0 when they do not overlap."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0
