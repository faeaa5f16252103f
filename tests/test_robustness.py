"""Tests for robustness.py: option shuffle / rotation bookkeeping, CircularEval, per-question
flips against the base run, and rephrased questions (checked, cached and reused).

    python -m pytest -q tests/test_robustness.py
"""
import json

import pytest

import robustness
from prompts import gold_letter

MC = {"id": "q1", "question": "Which modality?", "answer": "C", "images": ["a.png"], "meta": {},
      "options": {"A": "X-ray", "B": "MRI", "C": "CT", "D": "Ultrasound", "E": "PET"}}


def row(id, correct, **kw):
    return {"id": id, "base_id": id.split("#")[0], "correct": correct, "flags": [], **kw}


# ----------------------------------------------------------------- shuffles and rotations
def test_a_shuffle_never_leaves_the_options_in_their_order():
    two = {"id": "t", "question": "Q?", "answer": "A", "options": {"A": "yes", "B": "no"}, "meta": {}}
    assert all(robustness.shuffle_record(two, s)["options"] == {"A": "no", "B": "yes"} for s in range(20))
    for s in range(200):  # 1 in 24 draws of 4 options returns the same order: those are rotated
        four = {**MC, "id": f"q{s}", "options": dict(zip("ABCD", ["w", "x", "y", "z"])), "answer": "B"}
        shuffled = robustness.shuffle_record(four, 0)
        assert shuffled["options"] != four["options"]
        assert shuffled["options"][shuffled["answer"]] == "x"
    for s in range(200):  # two options with the same text: the question must still read differently
        dup = {**MC, "id": f"d{s}", "options": {"A": "x", "B": "x", "C": "y"}, "answer": "C"}
        shuffled = robustness.shuffle_record(dup, 0)
        assert list(shuffled["options"].values()) != ["x", "x", "y"] and shuffled["options"][shuffled["answer"]] == "y"


def test_shuffle_keeps_gold_text_and_is_seeded():
    a, b = robustness.shuffle_record(MC, 0), robustness.shuffle_record(MC, 0)
    assert a == b and a["options"][a["answer"]] == "CT" and \
        sorted(a["options"].values()) == sorted(MC["options"].values())
    assert all(robustness.shuffle_record(MC, s)["options"] != MC["options"] for s in range(30))
    assert {robustness.shuffle_record(MC, s)["answer"] for s in range(30)} == set("ABCDE")  # gold moves
    assert a["meta"]["base_id"] == "q1" and a["id"] == "q1#shuffle"


def test_rotations_move_gold_through_every_letter():
    rots = robustness.rotate_records(MC)
    assert len(rots) == 5 and rots[0]["options"] == MC["options"] and rots[0]["answer"] == "C"
    assert [r["answer"] for r in rots] == ["C", "B", "A", "E", "D"]
    assert all(r["options"][r["answer"]] == "CT" for r in rots)
    assert rots[1]["options"] == {"A": "MRI", "B": "CT", "C": "Ultrasound", "D": "PET", "E": "X-ray"}


def test_gold_given_as_text_is_remapped():
    r = robustness.permute_options({**MC, "answer": "ct"}, ["C", "A", "B", "D", "E"], "p")
    assert gold_letter(r) == "A" and r["options"]["A"] == "CT"
    assert robustness.permute_options({**MC, "answer": "c"}, ["C", "A", "B", "D", "E"], "p")["answer"] == "A"


def test_circular_eval_needs_every_rotation_right():
    rows = [{"base_id": "q1", "correct": c} for c in (True, True, True)] + \
           [{"base_id": "q2", "correct": c} for c in (True, False, True)]
    assert robustness.circular_accuracy(rows) == 0.5


def test_compare_rows_counts_flips():
    base = [{"base_id": i, "correct": c} for i, c in [("a", True), ("b", False), ("c", True)]]
    other = [{"base_id": i, "correct": c} for i, c in [("a", False), ("b", True), ("c", True), ("d", True)]]
    res = robustness.compare_rows(base, other)
    assert res["n"] == 3 and res["right_to_wrong"] == ["a"] and res["wrong_to_right"] == ["b"]
    assert res["delta"] == pytest.approx(0.0)


# ----------------------------------------------------------------- rephrase test
@pytest.mark.parametrize("candidate,reason", [
    ("Which imaging technique was used to acquire this 3 mm slice of the liver?", "ok"),
    ("", "empty"), ("  which IMAGING modality was used for this 3 mm slice of the liver ", "unchanged"),
    ("Which of these modalities is it:\nA. CT\nB. MRI?", "lists_options"),
    ("Was this 3 mm slice of the liver acquired with magnetic resonance?", "names_an_option"),
    ("Which imaging technique was used to acquire this 5 mm slice of the liver?", "changed_numbers"),
    ("The 3 mm slice of the liver was acquired with an imaging technique.", "not_a_question"),
    ("Which imaging technique was used for this 3 mm slice of the liver " + "and so on " * 20 + "?", "too_long"),
])
def test_check_rephrasing(candidate, reason):
    question = "Which imaging modality was used for this 3 mm slice of the liver?"
    options = {"A": "Computed tomography", "B": "Magnetic resonance"}
    assert robustness.check_rephrasing(question, candidate, options) == (reason == "ok", reason)


def test_check_rephrasing_reads_option_texts_as_whole_words():
    """'CT' inside 'picture' or 'structure' names no option; a 'CT' the question lacked leaks one."""
    options = {"A": "CT", "B": "MRI"}
    question = "Which structure is abnormal in this image?"
    assert robustness.check_rephrasing(question, "Which structure looks abnormal in this picture?", options) == \
        (True, "ok")
    assert robustness.check_rephrasing(question, "In this CT, which structure is abnormal?", options) == \
        (False, "names_an_option")
    assert robustness.check_rephrasing("Is the CT or the MRI shown?", "Is this image a CT or an MRI?", options) == \
        (True, "ok")


def test_template_rephrasing_rewords_by_question_shape():
    assert robustness.template_rephrasing("What is the organ shown?") == "Can you identify the organ shown?"
    assert robustness.template_rephrasing("Which of the following is seen?") == \
        "Among the options given, which is seen?"
    assert robustness.template_rephrasing("Is there a fracture?") == "Does the image show a fracture?"
    assert robustness.template_rephrasing("How large is the mass?") == "Based on the image, how large is the mass?"


class Rephraser:
    """Rewords 'q1' well; for 'q2' it leaks an option, which the check refuses."""
    def __init__(self):
        self.asked, self.calls = 0, []

    def generate(self, requests, **kw):
        self.asked += len(requests)
        self.calls.append(kw)
        return [["What kind of scan is this image?" if "modality" in r["messages"][0]["content"] else
                 "Is the organ in this scan the liver, shown by Ultrasound?"] for r in requests]


def test_rephrasings_are_checked_cached_and_reused(tmp_path):
    q1 = {**MC, "id": "q1", "question": "Which imaging modality is this?"}
    q2 = {**MC, "id": "q2", "question": "Which organ is shown in this scan?"}
    yn = {**MC, "id": "q3", "options": None, "answer": "yes", "meta": {"question_rephrase": "Is it there?"}}
    cache, backend = str(tmp_path / "rephrasings.jsonl"), Rephraser()
    found, source = robustness.collect_rephrasings([q1, q2, yn], cache=cache, backend=backend, generate=True)
    assert found == {"q1": "What kind of scan is this image?",
                     "q2": "Based on the image, which organ is shown in this scan?",
                     "q3": "Is it there?"}
    assert source == {"q1": "model", "q2": "template", "q3": "dataset"}
    assert backend.calls == [{"max_new_tokens": 96, "temperature": 0.0, "seed": 0}]  # one greedy batch
    lines = [json.loads(line) for line in open(cache)]
    assert [(d["id"], d["source"], d["check"]) for d in lines] == \
        [("q1", "model", "ok"), ("q2", "template", "names_an_option")]
    assert lines[1]["model_output"].endswith("Ultrasound?") and lines[1]["original"] == q2["question"]
    again = Rephraser()
    assert robustness.collect_rephrasings([q1, q2, yn], cache=cache, backend=again, generate=True)[0] == found
    assert again.asked == 0  # read back from the cache
    # no model: templates; a --rephrase-file line wins over everything
    (tmp_path / "mine.jsonl").write_text(json.dumps({"id": "q1", "question": "My own rewording?"}) + "\n")
    found, source = robustness.collect_rephrasings([q1, q2], rephrase_file=str(tmp_path / "mine.jsonl"), generate=True)
    assert found["q1"] == "My own rewording?" and source == {"q1": "file", "q2": "template"}


def test_rephrase_analysis_reports_the_change_and_the_per_question_consistency():
    base = [row("a", True), row("b", False), row("c", True), row("d", True)]
    reph = [row("a#rephrase", True), row("b#rephrase", True), row("c#rephrase", False), row("d#rephrase", True)]
    for r in reph:
        r["base_id"] = r["id"].split("#")[0]
    res = robustness.compare_rows(base, reph)
    assert (res["delta"], res["consistency"]) == (0.0, 0.5)  # same accuracy, but half the verdicts flipped
