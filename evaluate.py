"""Evaluation for infimed: answer parsing, MultiMedEval-style scoring, prompts, backends, the run.

    python evaluate.py run --model CKPT --benchmark vqa_rad --data-root DATA/VQA_RAD \
        --backend native --out runs/base [--limit 50] [--subset answer_type=CLOSED]
    python evaluate.py run --model CKPT --benchmark pmc_vqa --benchmark mmmu \
        --data-root pmc_vqa=DATA/PMC-VQA --data-root mmmu=DATA/MMMU --backend vllm \
        --out runs/base --shuffle --circular --rephrase --grounding --cot [--judge-model JUDGE]
    python evaluate.py compare runs/base runs/trained -o table.md   # Table 1 shape, side by side
    python -m pytest -q tests/test_evaluate.py

Benchmarks (sources.load_source): vqa_rad, slake, path_vqa, pmc_vqa (the clean test set),
pmc_vqa_full, pmc_vqa_open, mmmu, gmai_mmbench, synthetic. Scoring follows the scorers the paper
used: MultiMedEval's VQA scorer for VQA-RAD, SLAKE, Path-VQA (and open PMC-VQA); option accuracy
for multiple choice, with a parser stricter than VLMEvalKit's about chain of thought and the
article "A". The analyses, the LLM
judge and the Table 1 Markdown are in report.py. Per run directory: <benchmark>/<variant>.jsonl
(prompt, response, parsed answer, score, flags per sample), summary.json, table.md; a killed run
resumes from its JSONL files.
"""
import json
import math
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass

import report
from prompts import (COT_PROMPT, EVAL_PROMPTS, GROUNDING_PROMPT, cot_prompt, format_options,
                     gold_letter)

# ---- Multiple-choice answer parsing ---------------------------------------------------------
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*(?:</answer>|$)", re.I | re.S)
# a single letter standing alone: not inside a word, not "e.g."/"i.e.", not "B-cell", not "A's"
_LETTER = re.compile(r"(?<![\w'’\-.])([A-Za-z])(?![\w'’]|-\w|\.\w)")
# committing phrases followed by the chosen option ("the answer is (B)", "Final answer: C")
_CUE_BEFORE = re.compile(
    r"(?:\b(?:final|correct|right|best|most\s+(?:likely|appropriate|accurate|probable))\s+"
    r"(?:answer|option|choice)|\banswer)\s*(?:(?:is|would\s+be|should\s+be|will\s+be|must\s+be|"
    r"=)\s*)?[:：\-–=]?\s*(?:(?:option|choice|letter)\s*)?"
    r"|\bI\s+(?:would\s+|will\s+|'d\s+)?(?:choose|select|pick|go\s+with)\s*(?:(?:option|choice)\s*)?"
    r"|\b(?:therefore|thus|hence)\s*,?\s*(?:(?:option|choice)\s*)?"
    # "the most likely etiology is (A) coronavirus", "the correct diagnosis would be B"
    r"|\b(?:most\s+(?:likely|probable)|correct|right|best)\s+(?:[a-z\-]+\s+){1,3}?(?:is|would\s+be)\s*[:：\-–]?\s*"
    r"(?:(?:option|choice|letter)\s*)?", re.I)
# the chosen option followed by a committing phrase ("Option B is correct", "C: correct")
_CUE_AFTER = re.compile(
    r"(?<![\w'’\-.])((?:option|choice)\s+)?[\(\[\*\"']*([A-Za-z])[\)\]\*\"']*(?:\s*\([^()]{0,60}\))?"
    r"\s*(?:[:\-–]\s*(?:correct|true)\b|(?:is|would\s+be|seems(?:\s+to\s+be)?)\s+(?:the\s+)?"
    r"(?:(?:most\s+likely|best|correct|right|final)\s+)*(?:correct\b|true\b|answer\b|"
    r"(?:right|best)(?!\s*[a-z])|(?:right|best)\s+(?:answer|choice|option|one)\b))", re.I)
# negations around a letter or an option text: "not A", "rather than B", "C is incorrect" (a
# comma or period before "not" starts a contrast instead: "ultrasound, not a CT")
_NEG_BEFORE = re.compile(r"(?:\bnot|n't|\bnor|\brather\s+than|\binstead\s+of|\bexclud\w*|"
                         r"\beliminat\w*|\brul\w*\s+out|\bexcept|\bunlike|\bno)\s+"
                         r"(?:(?:option|choice|an?|the|region|area|part|panel|structure|label(?:l?ed)?|marked)\s+){0,2}"
                         # "not a CT or an MRI": the list goes too
                         r"(?:(?:[\w\-]+\s+){0,3}?[\w\-]+\s*(?:,|\bor\b|\bnor\b)\s*(?:(?:an?|the)\s+)?){0,3}"
                         r"[\(\[\*\"']*$", re.I)
_NEG_AFTER = re.compile(r"[\)\]\*\"':\s\-–]*(?:(?:is|are|was|were|seems|would\s+be|can\s+be|"
                        r"(?:do|does|did|would|could|can|may)(?=\s*(?:not|n't)))\s*)?"
                        r"(?:not\b|n't\b|incorrect\b|wrong\b|unlikely\b|inconsistent\b|rarely\b|ruled\s+out\b|"
                        r"less\s+(?:likely|consistent|typical|probable|appropriate)\b|excluded\b|eliminated\b|"
                        r"false\b)", re.I)
# the options a response sets aside as a group: "the other viruses listed (B, C, D, and E)"
_OTHERS_BEFORE = re.compile(r"\bothers?\b(?:\s+[\w\-]+){0,3}?\s*[\(\[:,]?\s*"
                            r"(?:[A-Za-z][\)\]]?\s*(?:,|\band\b|\bor\b)\s*)*"
                            r"(?:(?:and|or)\s+)?(?:options?\s+)?$", re.I)
# a capital letter that names a label in the figure: "the area labelled B", "region C"
_LABEL_BEFORE = re.compile(r"\b(?:labell?ed|label|marked|mark|region|area|structure|part|panel|point|letter)\s*$",
                           re.I)
# words after which a capital letter names a thing, not an option: "hepatitis B", "panel A"
_NAMED_BEFORE = re.compile(r"\b(?:type|hepatitis|vitamin|grade|class|stage|group|phase|zone|factor|"
                           r"complex|lead|figure|fig|panel|part|segment|point|plan)\.?\s*$", re.I)
# "A" followed by a word is the article, except before these (as in "A or B", "A is correct")
_ARTICLE_AFTER = re.compile(r"[ \t]+(?!(?:and|or|nor|is|was|are|were|seems|would|could|might|may|"
                            r"as|vs|versus|to|then|than|with|because|since|but|fits|matches)\b)\w")
_DECOR = "*()[]\"'`“”‘’ \t\n"
# an option letter right after an option text: "CT (B)", "CT B", "CT, option B", "CT - B"
_LETTER_AFTER_TEXT = re.compile(r"[\s,:\-–]*(?:(?:option|choice)\s+)?(?:[\(\[\*]*([A-Z])|[\(\[]([a-z])[\)\]])"
                                r"(?![\w'’]|-\w|\.\w)")


def _opt_text(text):
    return re.sub(r"\s+", " ", str(text)).strip().strip(".").lower()


def _exact(response, options):
    """The whole response is one option: its letter, its text, or 'B. <text of B>'."""
    s = response.strip(_DECOR).rstrip(".。!").strip(_DECOR)
    if not s:
        return None
    if len(s) == 1 and s.upper() in options:
        return s.upper()
    for letter, text in options.items():
        if s.lower() == _opt_text(text):
            return letter
    m = re.fullmatch(r"([A-Za-z])\s*[.):：]\s*(.+)", s, re.S)
    if m and m.group(1).upper() in options and _opt_text(m.group(2)) == _opt_text(options[m.group(1).upper()]):
        return m.group(1).upper()
    return None


def _is_letter_at(text, m, options):
    """Does the single-letter token matched by `m` name an option (and not an article)?"""
    c = m.group(1)
    if c.upper() not in options:
        return False
    before, after = text[max(0, m.start(1) - 40):m.start(1)], text[m.end(1):m.end(1) + 200]
    if before.endswith(("(", "[", "**", '"', "'")) and after.startswith((")", "]", "**", '"', "'")):
        return True  # decorated: "(b)", "**A**"
    if _NAMED_BEFORE.search(before):
        return False
    if c.islower():  # lowercase only at the very start ("b.", "b)"), else "a" is the article
        at_start = m.start(1) == len(text) - len(text.lstrip(_DECOR))
        return at_start and re.match(r"\s*(?:[.):：]|$)", after) is not None
    if c in "AI" and _ARTICLE_AFTER.match(after):  # "A lesion", "A 45-year-old", "I think"
        return after.strip().lower().startswith(_opt_text(options[c]))  # unless "A X-ray"
    return True


def _cue_choice(text, options):
    """The last committed choice ('the answer is B', 'B is correct'), by position, or None."""
    found = []
    for m in _CUE_BEFORE.finditer(text):
        rest = text[m.end():]
        lm = re.match(r"[\(\[\*\"'\s]*([A-Za-z])(?![\w'’]|-\w|\.\w)", rest)
        if lm and lm.group(1).upper() in options:
            c, after = lm.group(1), rest[lm.end():]
            if re.match(r"[\)\]\*\s]*(?:or|and|/)\s*(?:option\s+)?[\(\[\*]*[A-Z](?![\w'’])", after):
                continue  # "the answer is A or B": no commitment
            word_follows = _ARTICLE_AFTER.match(after) is not None  # "is a mass", "is A lesion"
            if (c.isupper() and c != "A") or not word_follows or \
                    after.strip().lower().startswith(_opt_text(options[c.upper()])):
                found.append((m.end() + lm.start(1), lm.group(1).upper()))
                continue
        # "the answer is ultrasound": an option text right after the cue (longest first). When a
        # letter follows the text ("Answer: CT (B)"), it must be that text's letter: "Answer: CT A"
        # with A another option commits to a letter the cue does not settle; the letter rules do.
        head = re.sub(r"^[\s\*\"'(\[]*(?:(?:an?|the)\s+)?", "", rest)
        for letter, t in sorted(options.items(), key=lambda kv: -len(_opt_text(kv[1]))):
            t = _opt_text(t)
            hit = t and re.match(re.escape(t) + r"(?!\w)", head, re.I)
            if hit:
                then = _LETTER_AFTER_TEXT.match(head, hit.end())
                named = (then.group(1) or then.group(2)).upper() if then else None
                if named is None or named == letter or named not in options:
                    found.append((m.end(), letter))
                break
    for m in _CUE_AFTER.finditer(text):
        c = m.group(2)
        if c.upper() in options and (c.isupper() or m.group(1)):
            found.append((m.start(2), c.upper()))
    return max(found)[1] if found else None


def _text_spans(text, options):
    """Spans of option texts in `text`, where an option inside a longer matched option does not
    count ('mass' inside 'mass effect'), and negated mentions ('no fracture') are dropped."""
    low, texts = text.lower(), {letter: _opt_text(t) for letter, t in options.items()}
    spans = [(m.start(), m.end(), letter) for letter, t in texts.items() if t
             for m in re.finditer(r"(?<!\w)" + re.escape(t) + r"(?!\w)", low)]
    kept = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and o[1] - o[0] > s[1] - s[0]
                                        for o in spans)]
    return [s for s in kept if not _NEG_BEFORE.search(low[max(0, s[0] - 60):s[0]])
            and not _negated_after(text, s[1], options)]


def _negated_after(text, end, options):
    """Is the option mention ending at `end` the subject of a negative predicate, maybe as part
    of a list: 'B is incorrect', 'Rhinovirus and adenovirus are not typically associated',
    'Options B, C, D and E are less consistent'?"""
    rest, items = text[end:end + 300], sorted((_opt_text(t) for t in options.values()), key=len, reverse=True)
    while True:  # skip ", C", " and influenza virus", " or (D)"
        m = re.match(r"\s*(?:,|\band\b|\bor\b|/)\s*(?:(?:an?|the|option|choice)\s+)?", rest, re.I)
        if not m:
            break
        after = rest[m.end():]
        item = re.match(r"[\(\[]?[A-Z][\)\]]?(?![\w'’])", after) or next(
            filter(None, (re.match(re.escape(t) + r"(?!\w)", after, re.I) for t in items if t)), None)
        if item is None:
            break
        rest = after[item.end():]
    return _NEG_AFTER.match(rest) is not None


def _resolve(text, options):
    """(letter or None, the rule that decided: exact, cue, letter, option_text or none)."""
    for rule, fn in (("exact", _exact), ("cue", _cue_choice)):
        hit = fn(text, options)
        if hit:
            return hit, rule
    spans = _text_spans(text, options)
    # options whose texts are figure labels ("A", "Region B"): a letter after a label word names
    # the option with that text, which need not be the option with that letter
    label_of = {m.group(1).upper(): k for k, t in options.items()
                if (m := re.fullmatch(r"(?:[a-z]+\s+)?([A-Za-z])", str(t).strip(), re.I))}
    letters = set()
    for m in _LETTER.finditer(text):
        before = text[max(0, m.start(1) - 60):m.start(1)]
        if label_of and _LABEL_BEFORE.search(before) and m.group(1).upper() in label_of:
            if not _NEG_BEFORE.search(before) and not _negated_after(text, m.end(1), options):
                letters.add(label_of[m.group(1).upper()])
            continue
        if any(s <= m.start(1) < e for s, e, _ in spans):
            continue  # the letter is part of an option's text ("Both A and B")
        if _is_letter_at(text, m, options) and not _NEG_BEFORE.search(before) and not _OTHERS_BEFORE.search(before) \
                and not _negated_after(text, m.end(1), options):
            letters.add(m.group(1).upper())
    found = letters or {s[2] for s in spans}  # option texts count only where no letter stands
    if len(found) != 1:
        return None, "none"
    return found.pop(), "letter" if letters else "option_text"


def parse_choice(response, options):
    """The option letter a free-text `response` commits to, or None (invalid).

    `options` maps letters ('A'..) to option texts. Precedence, first rule that decides wins:
      1. `<answer>X</answer>`: the last tag's content, resolved by rules 2-5 on that content alone
         (an unclosed final tag counts: generation may stop at the letter); when it names no
         option, the text outside the tags is parsed by rules 2-5 instead.
      2. The whole response is one option: 'B', '(b)', '**B**', 'B.', its text, 'B. <its text>'.
      3. A committing cue; the last one in the text wins (chain of thought concludes last):
         'the (correct|final|best) answer is (B)', 'Answer: **C**', 'I choose D', 'Therefore, B',
         'Option B is correct', 'C: correct', or a cue followed by an option's text ('the answer
         is ultrasound'; when a letter follows the text it must be that text's: 'Answer: CT A',
         A naming another option, is left to rule 4 and counts as A).
      4. Standalone option letters (VLMEvalKit's rule): exactly one distinct letter -> it. Not
         letters: the article ('A lesion...', lowercase 'a'), letters inside words / 'e.g.' /
         'B-cell', names ('hepatitis B', 'panel A'), letters inside a quoted option text, and
         negated mentions ('not A', 'rather than B', 'C is incorrect'). Lowercase counts only
         decorated '(b)' or at the very start ('b. ...').
      5. Only when rule 4 found no letter: option texts in the response (case-insensitive, whole
         words, a text inside a longer matched text ignored, negated mentions dropped): exactly
         one option -> it.
    Anything else (several letters, several texts, nothing) -> None.
    """
    return parse_choice_rule(response, options)[0]


def parse_choice_rule(response, options):
    """(parse_choice's letter, the rule that decided it): 'exact', 'cue', 'letter' or
    'option_text' (rules 2-5), prefixed 'answer_tag:' when read inside the last <answer> tag
    (rule 1); 'none' when no rule finds a single option."""
    options = {str(k).upper(): str(v) for k, v in options.items()}
    if not response or not response.strip():
        return None, "none"
    tags = _ANSWER_TAG.findall(response)
    if tags and tags[-1].strip():
        hit, rule = _resolve(tags[-1], options)
        if hit:
            return hit, "answer_tag:" + rule
    return _resolve(_ANSWER_TAG.sub(" ", response), options)


def response_category(response, options):
    """Instruction-following category of a multiple-choice response. The paper (section 4.3)
    sorts answers to its direct-letter prompt into single-letter, answer-prefixed and CoT-style;
    valid answers of no such form are 'other':

      single_letter    only the letter, decorated or not, or the letter with its own option text:
                       'B', '(b)', '**B**', 'B.', 'B. Magnetic resonance imaging'
      answer_prefixed  an answer phrase (or an <answer> tag) opens the response and states the
                       choice, a short reason may follow: 'Answer: B', 'The answer is B.',
                       'The correct option is (B) MRI, given the contrast.', '<answer>B</answer>'
      cot              reasoning first, then the choice, stated by a concluding phrase or an
                       <answer> tag, or named after at least 8 words of reasoning:
                       'The image shows soft tissue contrast, so the answer is B.',
                       'Bright soft tissue contrast.\n<answer>B</answer>'
      other            a valid answer in none of these forms: the bare option text ('Ultrasound'),
                       a letter with a reason but no answer phrase ('B, because of the contrast'),
                       a short remark naming one option ('Looks like an MRI.')
      invalid          parse_choice finds no single option ('A or B', 'I cannot tell.')
    """
    letter, rule = parse_choice_rule(response, options)
    if letter is None:
        return "invalid"
    s = response.strip(_DECOR).rstrip(".").strip(_DECOR)
    if rule == "exact":
        return "single_letter" if len(s) == 1 or re.fullmatch(r"[A-Za-z]\s*[.):：]\s*(.+)", s, re.S) else "other"
    if rule.startswith("answer_tag"):
        stated = response.lower().rindex("<answer>")
    elif rule == "cue":
        stated = max(m.start() for pat in (_CUE_BEFORE, _CUE_AFTER) for m in pat.finditer(response))
    else:  # a letter or an option's text without an answer phrase: where it last stands
        spots = [m.start(1) for m in _LETTER.finditer(response) if m.group(1).upper() == letter]
        spots += [m.start() for m in re.finditer(re.escape(_opt_text(options[letter])), response.lower())]
        before = len(response[:max(spots, default=0)].split())
        return "cot" if before >= 8 else "other"
    return "answer_prefixed" if len(response[:stated].split()) <= 2 else "cot"


# ---- MultiMedEval-style VQA scoring ---------------------------------------------------------
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
    while SLAKE writes 'Yes'/'No' and so never gets the prefix there. We compare lowercased and
    stripped (the raw VQA-RAD JSON also writes 'Yes'), so every yes/no question gets it."""
    return gold.strip().lower() in ("yes", "no")


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


# ---- Prompts (prompts.py; rendered through data.render_chat, the same chat code as training) and boxes
_NUM = r"(-?\d+(?:\.\d+)?)"
_BOXES = [re.compile(r"\[\s*" + r"\s*,\s*".join([_NUM] * 4) + r"\s*\]"),  # [x1, y1, x2, y2]
          re.compile(r"\(\s*{0}\s*,\s*{0}\s*\)\s*,?\s*(?:to\s*)?\(\s*{0}\s*,\s*{0}\s*\)".format(_NUM))]  # Qwen2-VL (x1,y1),(x2,y2)


def template_for(record, cot=False):
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


# ---- Backends: a batch of chat requests {"messages": [...], "images": [...]} in, texts out ----
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
        self.torch, self.data = torch, data
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        with open(os.path.join(model_dir, "config.json")) as f:
            kind = json.load(f).get("model_type")
        if kind not in ("qwen2_5_vl", "qwen2_vl"):
            raise ValueError(f"{model_dir} is a {kind!r} model: the native backend runs Qwen2-VL and Qwen2.5-VL "
                             "checkpoints only; evaluate other models with --backend vllm")
        self.model = infimed.QwenVL.from_pretrained(model_dir, dtype=dtype, device=self.device).eval()
        self.tok = data.load_tokenizer(model_dir)
        limits = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        has_cfg = os.path.exists(os.path.join(model_dir, "preprocessor_config.json"))
        self.proc = data.ImageProcessor.from_pretrained(model_dir, **limits) if has_cfg else data.ImageProcessor(**limits)
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
        """n Completions per request. With sampling, batch b draws from seed + b, so a result is
        reproducible for the same requests, batch size and seed. A text ends at the first of the
        `stop` strings (kept, as vLLM's include_stop_str_in_output) or at a stop token; one that
        ran into max_new_tokens first has finish 'length'."""
        t0 = time.perf_counter()
        encoded = [self.encode(r) for r in requests]
        self.timings["images"] += time.perf_counter() - t0
        rows = sorted(((i, j) for i in range(len(requests)) for j in range(n)), key=lambda r: len(encoded[r[0]]["input_ids"]))
        out = [[None] * n for _ in requests]
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            for b in range(0, len(rows), self.batch_size):
                chunk = rows[b:b + self.batch_size]
                ids, mask, pv, grid = self._batch([encoded[i] for i, _ in chunk])
                new = self.model.generate(ids, mask, pv, grid, max_new_tokens=max_new_tokens, temperature=temperature,
                                          top_p=top_p, seed=None if seed is None else seed + b, stop_token_ids=self.stop_ids)
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
    if kind == "native":
        return NativeBackend(model_dir, **kw)
    if kind == "vllm":
        from vllm_backend import VLLMBackend  # imports vllm only when built, only when chosen
        return VLLMBackend(model_dir, **{k: v for k, v in kw.items() if k != "device"})
    raise ValueError(f"unknown backend {kind!r}: native or vllm")


# ---- Benchmarks, scoring of one sample, resumable runs --------------------------------------
# name -> (sources.load_source name, split); report.COLUMNS names their Table 1 columns. Records
# with options are scored by option accuracy, records without by MultiMedEval (so MMMU's 5
# short-answer items are scored as open VQA; VLMEvalKit turns them into 2-option questions
# instead). pmc_vqa is the manually validated clean test set the paper reports (test_clean.csv,
# 2k items); pmc_vqa_full the whole test.csv; pmc_vqa_open drops the options of the clean set.
BENCHMARKS = {"vqa_rad": ("vqa_rad", "test"), "slake": ("slake", "test"), "path_vqa": ("path_vqa", "test"),
              "pmc_vqa": ("pmc_vqa", "test_clean"), "pmc_vqa_full": ("pmc_vqa", "test"),
              "pmc_vqa_open": ("pmc_vqa", "test_clean"), "mmmu": ("mmmu", "validation"),
              "gmai_mmbench": ("gmai_mmbench", "validation"), "synthetic": ("synthetic", "test")}
# The paper scores these with VLMEvalKit, whose protocol adds an LLM judge (--judge-model) for
# the answers its rules cannot read; the others with MultiMedEval's rules alone.
JUDGED = ("mmmu", "gmai_mmbench")


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
    rephrase_backend: str = "native"
    judge_model: str = None
    judge_backend: str = "native"


def code_version():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def load_benchmark(name, root, limit=None, subset=()):
    from sources import load_source
    source, split = BENCHMARKS[name]  # gold letters are checked here, before any generation
    records = [{**r, "answer": gold_letter(r)} if r.get("options") else r for r in load_source(source, root, split)]
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
    return records[:limit] if limit else records


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
    row["clinical_skill"] = report.skill_of(record)
    if report.group_labels(meta):
        row["groups"] = report.group_labels(meta)
    if record.get("options"):
        options, gold = record["options"], gold_letter(record)
        parsed, rule = parse_choice_rule(text, options)
        row.update(kind="mc", options=options, gold=gold, parsed=parsed, rule=rule, correct=parsed == gold,
                   correct_rules=parsed == gold, category=response_category(text, options), invalid=parsed is None)
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
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows.values())
    return rows


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
    """Generate and score `records` into `path`, skipping ids already there. Records whose image
    files are missing are written with the flag 'missing_image' (counted, not generated), those
    the backend cannot process (a corrupt image) with the flag 'error' and its message; at the
    end every record must have its row."""
    from tqdm import tqdm
    done = read_rows(path)
    todo = [r for r in records if r["id"] not in done]
    chunk, desc = max(1, cfg.batch_size) * 4, os.sep.join(path.split(os.sep)[-2:])  # benchmark/variant.jsonl
    with open(path, "a", encoding="utf-8") as f, \
            tqdm(total=len(records), initial=len(records) - len(todo), desc=desc, unit="sample") as bar:
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            missing = {r["id"]: [str(p) for p in r["images"] if isinstance(p, (str, os.PathLike)) and not os.path.exists(p)]
                       for r in part}
            ready = [r for r in part if not missing[r["id"]]]
            rows = [{"id": r["id"], "base_id": r.get("meta", {}).get("base_id", r["id"]), "flags": ["missing_image"],
                     "missing": missing[r["id"]], "correct": None} for r in part if missing[r["id"]]]
            prompts = [build_prompt(r, template_for(r, variant == "cot"), variant == "grounding") for r in ready]
            reqs = [{"messages": [{"role": "user", "content": p}], "images": r["images"]} for r, p in zip(ready, prompts)]
            budget = dict(max_new_tokens=cfg.cot_max_new_tokens, stop=["</answer>"]) if variant == "cot" else \
                dict(max_new_tokens=cfg.max_new_tokens)
            outs, errors = generate_each(backend, reqs, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                                         **budget) if reqs else ([], [])
            rows += [{"id": r["id"], "base_id": r.get("meta", {}).get("base_id", r["id"]), "flags": ["error"],
                      "error": e, "correct": None} for r, e in zip(ready, errors) if e]
            scored = [score_row(r, p, o[0], variant == "grounding")
                      for r, p, o, e in zip(ready, prompts, outs, errors) if not e]
            if judge is not None:
                report.judge_rows(judge, scored, cfg.seed)
            for r in rows + scored:
                r["variant"] = variant
                f.write(json.dumps(r) + "\n")
            f.flush()
            bar.update(len(part))
    rows = read_rows(path)
    lost = [r["id"] for r in records if r["id"] not in rows]
    if lost:
        raise RuntimeError(f"{path}: {len(lost)} of {len(records)} items have no row (e.g. {lost[:3]}); rerun "
                           "the same command to generate them")
    n_missing = sum("missing_image" in r["flags"] for r in rows.values())
    if n_missing:
        log(f"{path}: {n_missing} of {len(rows)} samples skipped, image file missing "
            f"(e.g. {next(r['missing'][0] for r in rows.values() if 'missing' in r)})")
    n_error = sum("error" in r["flags"] for r in rows.values())
    if n_error:
        log(f"{path}: {n_error} of {len(rows)} samples could not be processed (e.g. "
            f"{next(r['error'] for r in rows.values() if 'error' in r['flags'])})")
    return [rows[r["id"]] for r in records]


# ---- Orchestration and CLI ------------------------------------------------------------------
def evaluate(cfg, benchmarks, backend=None, log=print):
    """Run every benchmark ({name: data root}) and variant; write JSONL, summary.json, table.md."""
    os.makedirs(cfg.out, exist_ok=True)
    run = {**asdict(cfg), "name": cfg.name or os.path.basename(os.path.normpath(cfg.model)),
           "code_version": code_version(),
           "prompts": {**EVAL_PROMPTS, "cot": COT_PROMPT, "grounding": GROUNDING_PROMPT}}
    run_path = os.path.join(cfg.out, "run.json")
    old = json.load(open(run_path)) if os.path.exists(run_path) else run  # resuming: same settings
    diff = [k for k in ("model", "backend", "max_new_tokens", "cot_max_new_tokens", "temperature", "top_p", "seed",
                        "min_pixels", "max_pixels") if old.get(k) != run.get(k)]
    if diff:
        raise ValueError(f"{cfg.out} holds a run with other settings ({', '.join(diff)}); "
                         "choose another --out or delete it to start over")
    with open(run_path, "w") as f:
        json.dump(run, f, indent=2, default=str)
    kw = dict(batch_size=cfg.batch_size, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
              device=cfg.device, dtype=cfg.dtype)
    backend = backend or make_backend(cfg.backend, cfg.model, **kw)
    judge = make_backend(cfg.judge_backend, cfg.judge_model, **kw) if cfg.judge_model else None
    rephraser = make_backend(cfg.rephrase_backend, cfg.rephrase_model, **kw) \
        if cfg.rephrase_model and "rephrase" in cfg.variants else None
    summary = {"run": run, "benchmarks": {}}
    for name, root in benchmarks.items():
        records = load_benchmark(name, root, cfg.limit, cfg.subset)
        log(f"{name}: {len(records)} records from {root}")
        lacking = report.missing_axes(name, records)
        if lacking:
            log(f"{name}: no column {', '.join(map(repr, lacking))} in {root}: accuracy by that axis is not "
                "reported (the overall numbers are)")
        os.makedirs(os.path.join(cfg.out, name), exist_ok=True)
        per, sources = {}, {}
        for v in cfg.variants:  # base, then the analyses' variants (shuffled, rotated, ...)
            rephrasings = None
            if v == "rephrase":  # the dataset's own, a model's (checked) or a template's; kept for reuse
                rephrasings, sources = report.collect_rephrasings(
                    records, cfg.rephrase_file, os.path.join(cfg.out, name, "rephrasings.jsonl"), rephraser,
                    generate=True, seed=cfg.seed)
            recs = report.variant_records(records, v, cfg.seed, rephrasings=rephrasings)
            if recs:
                per[v] = run_variant(backend, recs, v, cfg, os.path.join(cfg.out, name, f"{v}.jsonl"),
                                     judge if name in JUDGED else None, log)
            else:
                log(f"{name}: no records for the {v} analysis (needs options / rephrasings), skipped")
        analyses = report.analyses(per, os.path.join(cfg.out, name))
        if "rephrase" in analyses:
            analyses["rephrase"]["sources"] = dict(Counter(sources.values()))
        summary["benchmarks"][name] = {**{v: report.summarize(rows) for v, rows in per.items()}, "analyses": analyses,
                                       **({"missing_group_columns": lacking} if lacking else {})}
    summary["timings"] = dict(getattr(backend, "timings", {}))
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(os.path.join(cfg.out, "table.md"), "w") as f:
        f.write(report.table_md([(run["name"], summary)]))
    return summary


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
    @click.option("--out", default="eval_out", show_default=True)
    @click.option("--name", default="", help="row label in the tables")
    @click.option("--limit", type=int)
    @click.option("--subset", multiple=True, help="KEY=VALUE filter on record/meta fields")
    @click.option("--max-new-tokens", default=64, show_default=True)
    @click.option("--cot-max-new-tokens", default=1024, show_default=True,
                  help="budget of the --cot answers (they stop at </answer>); cut ones are counted")
    @click.option("--temperature", default=0.0, show_default=True)
    @click.option("--top-p", default=1.0, show_default=True)
    @click.option("--seed", default=0, show_default=True)
    @click.option("--batch-size", default=8, show_default=True)
    @click.option("--device", help="native backend device (default: cuda if available)")
    @click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]))
    @click.option("--min-pixels", type=int)
    @click.option("--max-pixels", type=int, default=262144, show_default=True)
    @click.option("--shuffle", is_flag=True, help="options in a seeded random order")
    @click.option("--circular", is_flag=True, help="all cyclic option rotations (CircularEval)")
    @click.option("--rephrase", is_flag=True, help="rephrased questions: the dataset's own, else (multiple "
                  "choice) a checked rephrasing by --rephrase-model or a template; kept in OUT/<benchmark>/"
                  "rephrasings.jsonl")
    @click.option("--rephrase-file", type=click.Path(exists=True), help='JSONL of {"id", "question"} (wins)')
    @click.option("--rephrase-model", help="checkpoint that rephrases the multiple-choice questions")
    @click.option("--rephrase-backend", type=click.Choice(["native", "vllm"]), default="native")
    @click.option("--grounding", is_flag=True, help="also ask for a bounding box")
    @click.option("--cot", is_flag=True, help="chain-of-thought prompt, samples grouped by skill")
    @click.option("--judge-model", help="checkpoint that judges the MMMU and GMAI-MMBench answers the rules "
                  "cannot read (VLMEvalKit's protocol)")
    @click.option("--judge-backend", type=click.Choice(["native", "vllm"]), default="native")
    def run(benchmarks, roots, subset, **kw):
        """Run benchmarks; resumes from OUT's JSONL files."""
        kw["rephrase"] = kw["rephrase"] or bool(kw["rephrase_file"])  # a rephrase file implies --rephrase
        variants = ("base",) + tuple(v for v in report.VARIANTS[1:] if kw.pop(v))  # the analysis flags
        cfg = EvalConfig(**kw, subset=tuple(tuple(s.split("=", 1)) for s in subset), variants=variants)
        s = evaluate(cfg, data_roots(roots, benchmarks), log=click.echo)
        click.echo(open(os.path.join(cfg.out, "table.md")).read())
        click.echo(f"wrote {cfg.out}/summary.json, table.md and per-sample JSONL ({len(s['benchmarks'])} benchmarks)")

    @cli.command()
    @click.argument("runs", nargs=-1, required=True)
    @click.option("-o", "--output", help="also write the Markdown table here")
    def compare(runs, output):
        """Table-1-shaped Markdown comparing several run directories side by side."""
        table = report.compare(runs)
        click.echo(table)
        if output:
            with open(output, "w") as f:
                f.write(table)

    return cli


if __name__ == "__main__":
    _cli()()
