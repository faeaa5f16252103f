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


def mc_row(id, options, parsed, **kw):
    gold = kw.pop("gold", "A")
    return row(id, parsed == gold, kind="mc", options=options, gold=gold, parsed=parsed, **kw)


def test_same_answer_tells_two_different_wrong_answers_apart():
    options = dict(zip("ABCD", ["lupus", "gout", "psoriasis", "sarcoidosis"]))
    res = robustness.compare_rows([mc_row("a", options, "B")], [mc_row("a#shuffle", options, "D")])
    assert (res["consistency"], res["same_answer"]) == (1.0, 0.0)  # wrong both times, but not the same answer


def test_same_answer_reads_a_shuffled_letter_by_its_option_text():
    shuffled = robustness.shuffle_record(MC, 0)
    mri = next(k for k, t in shuffled["options"].items() if t == "MRI")
    assert mri != "B"
    res = robustness.compare_rows([mc_row("q1", MC["options"], "B", gold="C")],
                                  [mc_row(shuffled["id"], shuffled["options"], mri, gold=shuffled["answer"])])
    assert (res["same_answer"], res["n_same_answer"]) == (1.0, 1)


def test_same_answer_takes_the_judges_letter_where_the_rules_read_none():
    judged = mc_row("a#rephrase", MC["options"], None, gold="C", judge_parsed="B", flags=["judged"])
    res = robustness.compare_rows([mc_row("a", MC["options"], "B", gold="C")], [judged])
    assert res["same_answer"] == 1.0


def test_same_answer_leaves_out_open_questions_and_unread_answers():
    base = [mc_row("a", MC["options"], "C", gold="C"), mc_row("b", MC["options"], None, gold="C"),
            row("c", True, kind="vqa", parsed="yes")]
    other = [mc_row("a#rephrase", MC["options"], "C", gold="C"), mc_row("b#rephrase", MC["options"], "A", gold="C"),
             row("c#rephrase", True, kind="vqa", parsed="yes")]
    res = robustness.compare_rows(base, other)
    assert (res["n"], res["n_same_answer"], res["same_answer"]) == (3, 1, 1.0)
    res = robustness.compare_rows(base[2:], other[2:])
    assert (res["n"], res["n_same_answer"], res["same_answer"]) == (1, 0, None)  # nothing to compare


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


@pytest.mark.parametrize("question,candidate,reason", [
    ("Which of the following is NOT a symptom of lupus?", "Which of the following is a symptom of lupus?",
     "changed_negation"),
    ("All of the following are features of nephrotic syndrome EXCEPT:",
     "Which of the following are features of nephrotic syndrome?", "changed_negation"),
    ("Which finding is seen in this scan?", "Which finding is not seen in this scan?", "changed_negation"),
    ("Which of the following is NOT a symptom of lupus?", "Which of these isn't a symptom of lupus?", "ok"),
    ("All of the following are features of nephrotic syndrome EXCEPT:",
     "All of the following are features of nephrotic syndrome except which one?", "ok"),
])
def test_check_rephrasing_refuses_a_changed_negation(question, candidate, reason):
    """Adding or dropping a NOT or EXCEPT makes another option the answer; rewording one does not."""
    assert robustness.check_rephrasing(question, candidate) == (reason == "ok", reason)


@pytest.mark.parametrize("output", [
    "Rephrased question: Which organ does this scan show?",
    "Here is the rephrased question: Which organ does this scan show?",
    "Sure! Here's a rephrased version of the question:\n\nWhich organ does this scan show?",
    '**Rephrased question:** "Which organ does this scan show?"',
    "“Which organ does this scan show?”",
    "Question: **Which organ does this scan show?**",
])
def test_clean_rephrasing_cuts_the_lead_in(output):
    assert robustness.clean_rephrasing(output) == "Which organ does this scan show?"


def test_clean_rephrasing_keeps_a_question_with_its_own_colon():
    question = "Regarding the scan: which organ is enlarged?"
    assert robustness.clean_rephrasing(question) == question


def test_check_rephrasing_reads_the_question_after_its_lead_in():
    question = "Which organ is shown in this scan?"
    assert robustness.check_rephrasing(question, "**Which organ does this scan show?**") == (True, "ok")
    assert robustness.check_rephrasing(question, "Rephrased question: " + question) == (False, "unchanged")


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


def test_template_rephrasing_keeps_leading_image_tags_in_front():
    assert robustness.template_rephrasing("<image 1> What is the most likely diagnosis?") == \
        "<image 1> Can you identify the most likely diagnosis?"
    assert robustness.template_rephrasing("<image 1> <image 2> Which of the following is seen?") == \
        "<image 1> <image 2> Among the options given, which is seen?"
    assert robustness.template_rephrasing("Compare <image 1> and <image 2>. What changed?") == \
        "Based on the image, compare <image 1> and <image 2>. What changed?"  # only leading tags move


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


def test_templates_written_for_want_of_a_model_give_way_to_a_model_given_later(tmp_path):
    """A rephrase run continued with --rephrase-model asks the model for the questions that got a
    template only because no model was given; the newest cached line of a question is read."""
    q1 = {**MC, "id": "q1", "question": "Which imaging modality is this?"}
    cache = str(tmp_path / "rephrasings.jsonl")
    assert robustness.collect_rephrasings([q1], cache=cache, generate=True)[1] == {"q1": "template"}
    model = Rephraser()
    found, source = robustness.collect_rephrasings([q1], cache=cache, backend=model, generate=True)
    assert model.asked == 1 and (found, source) == ({"q1": "What kind of scan is this image?"}, {"q1": "model"})
    assert robustness.collect_rephrasings([q1], cache=cache, generate=True) == (found, source)


class LeadIn:
    """Puts a lead-in, markdown and quotes around a good rephrasing."""
    def generate(self, requests, **kw):
        return [['Sure! Here is the rephrased question:\n\n**"What kind of scan is this image?"**']] * len(requests)


def test_rephrasings_are_kept_without_the_models_lead_in(tmp_path):
    q1, cache = {**MC, "question": "Which imaging modality is this?"}, str(tmp_path / "rephrasings.jsonl")
    found, source = robustness.collect_rephrasings([q1], cache=cache, backend=LeadIn(), generate=True)
    assert (found, source) == ({"q1": "What kind of scan is this image?"}, {"q1": "model"})
    [line] = [json.loads(line) for line in open(cache)]
    assert line["question"] == "What kind of scan is this image?" and line["model_output"].startswith("Sure!")


def test_rephrase_analysis_reports_the_change_and_the_per_question_consistency():
    base = [row("a", True), row("b", False), row("c", True), row("d", True)]
    reph = [row("a#rephrase", True), row("b#rephrase", True), row("c#rephrase", False), row("d#rephrase", True)]
    for r in reph:
        r["base_id"] = r["id"].split("#")[0]
    res = robustness.compare_rows(base, reph)
    assert (res["delta"], res["consistency"]) == (0.0, 0.5)  # same accuracy, but half the verdicts flipped
