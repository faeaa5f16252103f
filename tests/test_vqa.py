"""Tests for vqa.py: MultiMedEval's VQA scores against hand-computed values, the yes/no flag's
inputs, and the boxes of grounded answers.

    python -m pytest -q tests/test_vqa.py
"""
import math

import pytest

from vqa import box_iou, bleu1, clean_text, parse_box, vqa_scores

# ----------------------------------------------------------------- MultiMedEval scoring
@pytest.mark.parametrize("text,cleaned", [
    ("The Left Lung.", "left lung"),            # lowercase, article dropped, final period deleted
    ("two lesions", "2 lesions"), ("None", "0"), ("Ten", "10"),  # number words (none..ten)
    ("x-ray", "x ray"),                         # '-' not touching a space becomes a space
    ("well - defined", "well defined"),         # '-' touching a space is deleted
    ("1,000 cells, left-sided", "1000 cells leftsided"),  # digit,digit comma: every mark deleted
    ("3.5 cm", "3.5 cm"), ("size 3.", "size 3"),  # '.' kept only before a digit
    ("dont know", "don't know"), ("isnt it?", "isn't it"), ("couldnt've", "couldn't've"),
    ("an MRI", "mri"), ("yes.", "yes"),
    ("**yes**", "**yes**"), ("answer: yes", "answer: yes"),  # '*' and ':' are not in the list
])
def test_clean_text(text, cleaned):
    assert clean_text(text) == cleaned


def test_closed_yes_with_extra_words():
    s = vqa_scores("Yes, there is.", "yes")
    assert s["closed"] and s["correct"]
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(0.5) and s["bleu1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("prediction,gold,correct", [
    ("There is no fracture", "No", True), ("There is not any fracture", "no", True),  # 'not' counts for no
    ("Yes", "no", False), ("no", "yes", False), ("nothing seen", "no", False), ("Not", "yes", False),
    ("yes", "Yes.", True),                                       # gold cleaned before the test
])
def test_closed_correctness(prediction, gold, correct):
    s = vqa_scores(prediction, gold)
    assert s["closed"] and s["correct"] is correct


@pytest.mark.parametrize("gold,closed", [("Yes.", True), (" No ", True), ("YES", True), ("yes, on the left", False),
                                         ("not", False), ("no fracture", False)])
def test_closed_is_decided_by_cleaned_gold(gold, closed):
    assert vqa_scores("yes", gold)["closed"] is closed


def test_open_recall_precision_f1_bleu():
    s = vqa_scores("The lesion is in the right lower lobe", "right lower lobe")
    assert not s["closed"] and s["correct"]
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(0.5)  # 3 of {lesion,is,in,right,lower,lobe}
    assert s["f1"] == pytest.approx(2 / 3) and s["bleu1"] == pytest.approx(0.5)  # c > r: no penalty


def test_bleu_brevity_penalty():
    s = vqa_scores("lobe", "right lower lobe")  # c = 1, r = 3: exp(1 - 3) * 1/1
    assert s["bleu1"] == pytest.approx(math.exp(-2)) and s["recall"] == pytest.approx(1 / 3) and not s["correct"]
    assert bleu1("lobe lobe lobe", "right lobe") == pytest.approx(1 / 3)  # clipped count: 1 of 3
    assert bleu1("", "lobe") == 0.0


@pytest.mark.parametrize("prediction,gold,recall,correct", [
    ("two", "2", 1.0, True), ("left lung", "right lung", 0.5, False),
    ("mass in left upper", "left upper lobe mass", 0.75, True),  # recall exactly 0.75 is correct
    ("left upper", "left upper lobe", 2 / 3, False), ("PA", "Posterior-Anterior", 0.0, False),
    ("the the the", "the", 0.0, False),  # a gold of only articles has no tokens
])
def test_open_accuracy_threshold(prediction, gold, recall, correct):
    s = vqa_scores(prediction, gold)
    assert s["recall"] == pytest.approx(recall) and s["correct"] is correct


# MultiMedEval's VQA scorer (multimedeval/utils.py clean_str, task_families.py VQA.evaluate), every
# value worked out by hand from its rules: text lowercased; each listed mark (; / [ ] " { } ( ) = +
# \ _ - > < @ ` , ? !) deleted everywhere when it touches a space somewhere in the text, or when
# the text holds a digit,digit comma, else replaced by a space; '.' not followed by a digit
# deleted, only the first 32 (re.UNICODE == 32 lands in sub's count); none/zero..ten -> digits;
# a/an/the dropped; contraction table (keyed by spellings without an apostrophe); tokens = set
# of words. Closed: cleaned gold is yes/no, right when the gold word (for 'no' also 'not') is a
# token. Open: recall >= 0.75. BLEU-1 on the cleaned strings: clipped unigram precision times
# exp(1 - r/c) unless c > r.
# (prediction, gold, closed, correct, recall, precision, bleu1)  # the rule exercised
MULTIMEDEVAL_CASES = [
    ("Yes", "yes", True, True, 1, 1, 1),                                   # lowercase
    ("**Yes**", "yes", True, False, 0, 0, 0),                              # '*' is not in the list
    ("Yes!", "yes", True, True, 1, 1, 1),                                  # '!' -> space
    ("Yes" + "." * 32, "yes", True, True, 1, 1, 1),                        # 32 periods: all deleted
    ("Yes" + "." * 33, "yes", True, False, 0, 0, 0),                       # 33: 'yes.' is left
    ("No, there is not.", "no", True, True, 1, 1 / 4, 1 / 4),              # ', ' deleted; recall on {no}
    ("Not", "no", True, True, 0, 0, 0),                                    # 'not' right, yet recall 0
    ("Yes and no", "no", True, True, 1, 1 / 3, 1 / 3),                     # a hedge is right ...
    ("Yes and no", "yes", True, True, 1, 1 / 3, 1 / 3),                    # ... for either gold
    ("nothing seen", "no", True, False, 0, 0, 0),                          # whole words only
    ("yes", "Yes.", True, True, 1, 1, 1),                                  # gold cleaned too
    ("yes", "yes, on the left", False, False, 1 / 3, 1, math.exp(-2)),     # open: gold not exactly yes
    ("two lesions", "2", False, True, 1, 1 / 2, 1 / 2),                    # number words
    ("None", "0", False, True, 1, 1, 1),                                   # 'none' is 0
    ("eleven", "11", False, False, 0, 0, 0),                               # only zero..ten
    ("1,000 cells", "1000", False, True, 1, 1 / 2, 1 / 2),                 # digit,digit: marks deleted
    ("1, 000", "1000", False, False, 0, 0, 0),                             # ', ' deleted: '1' '000'
    ("left,right 1,2", "left", False, False, 0, 0, 0),                     # digit,digit: 'leftright 12'
    ("left,right", "left", False, True, 1, 1 / 2, 1 / 2),                  # else ',' -> space
    ("well-defined, well - circumscribed", "well defined", False, False,   # ' - ' somewhere: every
     1 / 2, 1 / 3, 1 / 3),                                                 # '-' deleted: 'welldefined'
    ("dont know", "don't know", False, True, 1, 1, 1),                     # contraction restored
    ("isnt", "isn't", False, True, 1, 1, 1),
    ("somebody'd", "somebodyd", False, True, 1, 1, 1),                     # the table's inverted entry
    ("im not sure", "i'm not sure", False, False, 2 / 3, 2 / 3, 2 / 3),    # 'Im' key never matches
    ("The left lung.", "left lung", False, True, 1, 1, 1),                 # articles dropped
    ("lung", "the", False, False, 0, 0, 0),                                # a gold of articles: no tokens
    ("answer: yes", "yes", True, True, 1, 1 / 2, 1 / 2),                   # ':' is not in the list
    ("size 3.", "3", False, True, 1, 1 / 2, 1 / 2),                        # '3.' -> '3'
    ("3.5 cm", "3.5", False, True, 1, 1 / 2, 1 / 2),                       # '.' before a digit kept
    ("mass in left upper", "left upper lobe mass", False, True, 3 / 4, 3 / 4, 3 / 4),  # recall 0.75 is right
    ("left upper", "left upper lobe", False, False, 2 / 3, 1, math.exp(-0.5)),  # c < r: exp(1 - 3/2)
    ("lobe lobe lobe", "right lobe", False, False, 1 / 2, 1, 1 / 3),      # sets; BLEU clips to 1 of 3
    ("", "yes", True, False, 0, 0, 0),                                     # empty answer
]


@pytest.mark.parametrize("prediction,gold,closed,correct,recall,precision,bleu", MULTIMEDEVAL_CASES,
                         ids=[f"{c[0][:24]}|{c[1]}" for c in MULTIMEDEVAL_CASES])
def test_vqa_scores_follow_multimedeval(prediction, gold, closed, correct, recall, precision, bleu):
    """Every field of vqa_scores against MultiMedEval's rules worked by hand. Its F1 is
    2pr / (p + r + 1e-8): ours (no 1e-8) is above it by 2pr * 1e-8 / ((p + r)(p + r + 1e-8)),
    less than 5e-9 since 2pr <= (p + r)^2 / 2."""
    s = vqa_scores(prediction, gold)
    assert (s["closed"], s["correct"], s["recall"], s["precision"]) == (closed, correct, recall, precision)
    assert s["bleu1"] == bleu  # exact: the same float operations as the hand value
    assert s["f1"] == pytest.approx(2 * precision * recall / (precision + recall + 1e-8), rel=0, abs=1e-8)


# ----------------------------------------------------------------- boxes
@pytest.mark.parametrize("text,box", [
    ("Yes. [10, 20, 50, 80]", (10, 20, 50, 80)), ("B [50.5, 80, 10, 20.25]", (10, 20.25, 50.5, 80)),
    ('{"bbox_2d": [1, 2, 3, 4], "label": "lesion"}', (1, 2, 3, 4)),
    ("<|box_start|>(12,34),(56,78)<|box_end|>", (12, 34, 56, 78)),
    ("first [0, 0, 1, 1] then [5, 5, 9, 9]", (5, 5, 9, 9)), ("no box here, 3 lesions", None),
])
def test_parse_box(text, box):
    assert parse_box(text) == box


@pytest.mark.parametrize("a,b,iou", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),      # the same box
    ((0, 0, 10, 10), (5, 0, 15, 10), 1 / 3),    # half along x: 50 / (100 + 100 - 50)
    ((0, 0, 4, 4), (2, 2, 6, 6), 1 / 7),        # corners overlap: 4 / (16 + 16 - 4)
    ((0, 0, 10, 10), (2, 2, 6, 6), 0.16),       # containment: 16 / 100
    ((2, 2, 6, 6), (0, 0, 10, 10), 0.16),       # either order
    ((0, 0, 10, 10), (0, 20, 10, 30), 0.0),     # x spans agree, y apart
    ((0, 0, 10, 10), (20, 0, 30, 10), 0.0),     # y spans agree, x apart
    ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),    # apart on both axes (two negative spans must not make area)
    ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),     # sharing an edge only
    ((3, 3, 3, 3), (3, 3, 3, 3), 0.0),          # zero-area boxes: no union
])
def test_box_iou_by_hand(a, b, iou):
    assert box_iou(a, b) == iou
