"""Tests for report.py: option shuffle / rotation bookkeeping, CircularEval, per-question flips,
rephrased records, the LLM judge, summaries (instruction following, positional bias), chain-of-thought samples
grouped by clinical skill, and the Table-1-shaped Markdown.

    python -m pytest -q tests/test_report.py
"""
import json
import math

import pytest

import evaluate as ev
import report
from prompts import gold_letter

MC = {"id": "q1", "question": "Which modality?", "answer": "C", "images": ["a.png"], "meta": {},
      "options": {"A": "X-ray", "B": "MRI", "C": "CT", "D": "Ultrasound", "E": "PET"}}


def row(id, correct, **kw):
    return {"id": id, "base_id": id.split("#")[0], "correct": correct, "flags": [], **kw}


# ----------------------------------------------------------------- shuffles and rotations
def test_a_shuffle_never_leaves_the_options_in_their_order():
    two = {"id": "t", "question": "Q?", "answer": "A", "options": {"A": "yes", "B": "no"}, "meta": {}}
    assert all(report.shuffle_record(two, s)["options"] == {"A": "no", "B": "yes"} for s in range(20))
    for s in range(200):  # 1 in 24 draws of 4 options returns the same order: those are rotated
        four = {**MC, "id": f"q{s}", "options": dict(zip("ABCD", ["w", "x", "y", "z"])), "answer": "B"}
        shuffled = report.shuffle_record(four, 0)
        assert shuffled["options"] != four["options"]
        assert shuffled["options"][shuffled["answer"]] == "x"


def test_shuffle_keeps_gold_text_and_is_seeded():
    a, b = report.shuffle_record(MC, 0), report.shuffle_record(MC, 0)
    assert a == b and a["options"][a["answer"]] == "CT" and sorted(a["options"].values()) == sorted(MC["options"].values())
    assert all(report.shuffle_record(MC, s)["options"] != MC["options"] for s in range(30))
    assert {report.shuffle_record(MC, s)["answer"] for s in range(30)} == set("ABCDE")  # gold moves
    assert a["meta"]["base_id"] == "q1" and a["id"] == "q1#shuffle"


def test_rotations_move_gold_through_every_letter():
    rots = report.rotate_records(MC)
    assert len(rots) == 5 and rots[0]["options"] == MC["options"] and rots[0]["answer"] == "C"
    assert [r["answer"] for r in rots] == ["C", "B", "A", "E", "D"]
    assert all(r["options"][r["answer"]] == "CT" for r in rots)
    assert rots[1]["options"] == {"A": "MRI", "B": "CT", "C": "Ultrasound", "D": "PET", "E": "X-ray"}


def test_gold_given_as_text_is_remapped():
    r = report.permute_options({**MC, "answer": "ct"}, ["C", "A", "B", "D", "E"], "p")
    assert gold_letter(r) == "A" and r["options"]["A"] == "CT"
    assert report.permute_options({**MC, "answer": "c"}, ["C", "A", "B", "D", "E"], "p")["answer"] == "A"


def test_circular_eval_needs_every_rotation_right():
    rows = [{"base_id": "q1", "correct": c} for c in (True, True, True)] + \
           [{"base_id": "q2", "correct": c} for c in (True, False, True)]
    assert report.circular_accuracy(rows) == 0.5


def test_compare_rows_counts_flips():
    base = [{"base_id": i, "correct": c} for i, c in [("a", True), ("b", False), ("c", True)]]
    other = [{"base_id": i, "correct": c} for i, c in [("a", False), ("b", True), ("c", True), ("d", True)]]
    res = report.compare_rows(base, other)
    assert res["n"] == 3 and res["right_to_wrong"] == ["a"] and res["wrong_to_right"] == ["b"]
    assert res["delta"] == pytest.approx(0.0)


# ----------------------------------------------------------------- which records each variant asks
def test_variant_records_per_analysis(tmp_path):
    yn = {**MC, "id": "q2", "options": None, "answer": "yes", "meta": {"question_rephrase": "Is it there?"}}
    null = {**yn, "id": "q3", "meta": {"question_rephrase": "NULL"}}  # VQA-RAD's placeholder: no rephrasing
    recs = [MC, yn, null]
    assert report.variant_records(recs, "base") == recs and report.variant_records(recs, "grounding") == recs
    assert report.variant_records(recs, "cot") == [MC]
    assert [r["id"] for r in report.variant_records(recs, "shuffle")] == ["q1#shuffle"]
    assert len(report.variant_records(recs, "circular")) == 5
    reph = report.variant_records(recs, "rephrase")
    assert [(r["id"], r["question"], r["meta"]["base_id"]) for r in reph] == [("q2#rephrase", "Is it there?", "q2")]
    path = tmp_path / "reph.jsonl"
    path.write_text(json.dumps({"id": "q1", "question": " Which imaging modality? "}) + "\n")
    assert [r["question"] for r in report.variant_records(recs, "rephrase", rephrase_file=str(path))] == \
        ["Which imaging modality?", "Is it there?"]


# ----------------------------------------------------------------- LLM judge for invalid answers
class LetterJudge:
    def __init__(self, reply):
        self.reply, self.prompts, self.calls = reply, [], []

    def generate(self, requests, **kw):
        self.prompts += [r["messages"][0]["content"] for r in requests]
        self.calls.append(kw)
        return [[self.reply] for _ in requests]


def test_judge_reads_only_what_the_rules_left_and_keeps_the_rules_verdict():
    """VLMEvalKit's protocol: rules first, the judge for the rest. The rules' reading (parsed,
    invalid, correct_rules) stays, so the invalid rate still measures instruction following,
    and the summary gives both accuracies."""
    r = {**MC, "options": {"A": "X-ray", "B": "MRI", "C": "CT"}, "answer": "C"}
    rows = [ev.score_row(r, "p", "It looks like a cross-sectional density scan."), ev.score_row(r, "p", "B")]
    judge = LetterJudge(" C.")
    report.judge_rows(judge, rows)
    assert len(judge.prompts) == 1 and "Which modality?" in judge.prompts[0] and "C. CT" in judge.prompts[0]
    assert judge.calls == [{"max_new_tokens": 8, "temperature": 0.0, "seed": 0}]  # greedy, whatever the run samples
    assert rows[0]["judge_parsed"] == "C" and rows[0]["correct"] and rows[0]["flags"] == ["judged"]
    assert rows[0]["parsed"] is None and rows[0]["invalid"] and rows[0]["correct_rules"] is False
    assert rows[1]["flags"] == [] and rows[1]["parsed"] == "B" and rows[1]["rule"] == "exact"
    s = report.summarize(rows)
    assert (s["accuracy"], s["accuracy_rules"], s["invalid_rate"], s["judged"]) == (0.5, 0.0, 0.5, 1)
    rows = [ev.score_row(r, "p", "no idea")]
    report.judge_rows(LetterJudge("Z"), rows)  # the judge found no option either
    assert rows[0]["parsed"] is None and rows[0]["flags"] == ["judged"] and report.summarize(rows)["judged"] == 1


# ----------------------------------------------------------------- summaries and analyses
def test_summary_vqa_metrics_are_multimedevals():
    """MultiMedEval's aggregates, by hand: closed accuracy over the yes/no items; open recall and
    open accuracy (recall >= 0.75) over the others; BLEU-1, F1 and recall over all items."""
    items = [("Yes", "yes"),                 # closed, right: recall 1, precision 1, BLEU 1
             ("No, there is not.", "yes"),   # closed, wrong: 0, 0, 0
             ("two lesions", "2"),           # open: recall 1, precision 1/2, BLEU 1/2 (right)
             ("lobe", "right lower lobe")]   # open: recall 1/3, precision 1, BLEU exp(1 - 3) (wrong)
    rows = [ev.score_row({**MC, "id": f"v{i}", "options": None, "answer": gold}, "p", pred)
            for i, (pred, gold) in enumerate(items)]
    s = report.summarize(rows)
    assert (s["n_closed"], s["n_open"], s["closed_accuracy"], s["open_recall"], s["open_accuracy"]) == \
        (2, 2, 1 / 2, (1 + 1 / 3) / 2, 1 / 2)
    assert (s["accuracy"], s["recall"]) == (2 / 4, (1 + 0 + 1 + 1 / 3) / 4)
    assert s["bleu1"] == (1 + 0 + 1 / 2 + math.exp(-2)) / 4

    def mme_f1(p, r):  # MultiMedEval's per-item F1
        return 2 * p * r / (p + r + 1e-8)
    f1 = (mme_f1(1, 1) + mme_f1(0, 0) + mme_f1(1 / 2, 1) + mme_f1(1, 1 / 3)) / 4
    assert s["f1"] == pytest.approx(f1, rel=0, abs=1e-8)  # ours has no 1e-8: measured 3.3e-9 above
    table = report.table_md([("run", {"benchmarks": {"vqa_rad": {"base": s, "analyses": {}}}})]).splitlines()
    assert "| run | VQA-RAD | 50.00 | 66.67 | 50.00 | 40.88 | 54.17 | 50.00 |" in table


def test_summary_has_instruction_following_and_positional_bias():
    rows = [row("a", True, kind="mc", parsed="A", gold="A", category="single_letter"),
            row("b", False, kind="mc", parsed="A", gold="B", category="cot"),
            row("c", False, kind="mc", parsed=None, gold="B", category="invalid"),
            row("d", True, kind="mc", parsed="B", gold="B", category="answer_prefixed", flags=["judged"]),
            {"id": "e", "base_id": "e", "flags": ["missing_image"], "correct": None}]
    s = report.summarize(rows)
    assert (s["n"], s["n_scored"], s["n_missing_image"], s["n_mc"]) == (5, 4, 1, 4)
    assert s["accuracy"] == s["mc_accuracy"] == 0.5 and s["invalid_rate"] == 0.25 and s["judged"] == 1
    assert s["categories"] == {"single_letter": 0.25, "answer_prefixed": 0.25, "cot": 0.25, "other": 0.0,
                               "invalid": 0.25}
    assert s["chosen_letters"] == {"A": 2, "B": 1, "invalid": 1} and s["gold_letters"] == {"A": 1, "B": 3}


def test_analyses_compare_each_variant_with_base(tmp_path):
    base = [row("m", True, kind="mc"), row("v", True, kind="vqa")]
    per = {"base": base, "shuffle": [row("m#shuffle", False, kind="mc")],
           "rephrase": [row("v#rephrase", True, kind="vqa")],
           "circular": [row("m#rot0", True), row("m#rot1", False), row("n#rot0", True), row("n#rot1", True)]}
    res = report.analyses(per, str(tmp_path))
    assert res["shuffle"]["n"] == 1 and res["shuffle"]["right_to_wrong"] == ["m"]  # only multiple-choice rows
    assert res["rephrase"]["n"] == 1 and res["rephrase"]["delta"] == 0.0
    assert res["circular"] == {"n": 2, "circular_accuracy": 0.5, "rotation_accuracy": 0.75}


def test_cot_samples_grouped_by_skill(tmp_path):
    qs = ["What imaging modality is shown?", "Where is the lesion located?", "What is the shape of the lesion?",
          "Which of the following is most likely?", "What does the arrow point to?"]
    rows = [{**ev.score_row({**MC, "id": f"q{i}", "question": q, "answer": "A", "options": {"A": "x", "B": "y"}},
                            "p", "Thinking. <answer>A</answer>")} for i, q in enumerate(qs)]
    res = report.cot_report(rows, str(tmp_path / "cot.md"))
    assert [res[name]["n"] for name, _ in report.SKILLS] == [1, 1, 1, 1, 1]
    assert all(res[name]["accuracy"] == 1.0 for name, _ in report.SKILLS)
    assert "## modality recognition (1 samples, accuracy 100.00)" in (tmp_path / "cot.md").read_text()
    assert report.skill_of({"question": "What is seen?", "meta": {"skill": "anatomical localization"}}) == "anatomical localization"
    assert report.skill_of({"question": "What is seen?", "skill": "side"}) == "anatomical localization"  # synthetic name


# ----------------------------------------------------------------- tables
def test_table_has_one_row_per_model_and_a_column_per_benchmark():
    vqa_rad = {"accuracy": 0.61, "closed_accuracy": 0.745, "open_recall": 0.42, "open_accuracy": 0.35,
               "bleu1": 0.3, "f1": 0.4}
    s1 = {"benchmarks": {"vqa_rad": {"base": vqa_rad, "analyses": {}},
                         "pmc_vqa": {"base": {"accuracy": 0.5485, "invalid_rate": 0.0133, "categories": {
                             "single_letter": 0.9, "answer_prefixed": 0.05, "cot": 0.03, "other": 0.0067,
                             "invalid": 0.0133}},
                                     "analyses": {"shuffle": {"n": 5, "delta": -0.02}}}}}
    s2 = {"benchmarks": {"vqa_rad": {"base": {**vqa_rad, "closed_accuracy": 0.6096, "n": 451, "n_scored": 18},
                                     "analyses": {}}}}
    lines = report.table_md([("Infi-Med-3B", s1), ("Qwen2.5-VL-3B", s2)]).splitlines()
    assert lines[0] == "| Model | VQA-RAD | PMC-VQA |"
    # VQA-RAD's Table 1 number is the closed-question accuracy, not the accuracy over all items
    assert lines[2] == "| Infi-Med-3B | 74.50 | 54.85 |" and lines[3] == "| Qwen2.5-VL-3B | 60.96 (18/451) | - |"
    assert lines[5].startswith("VQA-RAD: MultiMedEval closed-question accuracy")
    assert "| Model | Benchmark | Closed acc. | Open recall | Open acc. (recall >= 0.75) | BLEU-1 | F1 | " \
           "All items acc. |" in lines
    assert "| Infi-Med-3B | VQA-RAD | 74.50 | 42.00 | 35.00 | 30.00 | 40.00 | 61.00 |" in lines
    assert "| Infi-Med-3B | PMC-VQA | 90.00 | 5.00 | 3.00 | 0.67 | 1.33 |" in lines  # response categories
    # robustness / instruction following: invalid rate, then shuffle, CircularEval, rephrase, grounding
    assert lines[-4:] == ["|---|---|---|---|---|---|---|", "| Infi-Med-3B | VQA-RAD | - | - | - | - | - |",
                          "| Infi-Med-3B | PMC-VQA | 1.33 | -2.00 | - | - | - |",
                          "| Qwen2.5-VL-3B | VQA-RAD | - | - | - | - | - |"]


def test_every_benchmark_has_a_table_column():
    assert list(report.COLUMNS) == list(ev.BENCHMARKS)


def test_compare_reads_run_directories(tmp_path):
    for name, acc in (("base", 0.5), ("trained", 0.75)):
        (tmp_path / name).mkdir()
        summary = {"run": {"name": name}, "benchmarks": {"pmc_vqa": {"base": {"accuracy": acc}}}}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    assert report.compare([str(tmp_path / "base"), str(tmp_path / "trained")]).splitlines() == \
        ["| Model | PMC-VQA |", "|---|---|", "| base | 50.00 |", "| trained | 75.00 |"]


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
    assert report.check_rephrasing(question, candidate, options) == (reason == "ok", reason)


def test_template_rephrasing_rewords_by_question_shape():
    assert report.template_rephrasing("What is the organ shown?") == "Can you identify the organ shown?"
    assert report.template_rephrasing("Which of the following is seen?") == "Among the options given, which is seen?"
    assert report.template_rephrasing("Is there a fracture?") == "Does the image show a fracture?"
    assert report.template_rephrasing("How large is the mass?") == "Based on the image, how large is the mass?"


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
    found, source = report.collect_rephrasings([q1, q2, yn], cache=cache, backend=backend, generate=True)
    assert found == {"q1": "What kind of scan is this image?", "q2": "Based on the image, which organ is shown in this scan?",
                     "q3": "Is it there?"}
    assert source == {"q1": "model", "q2": "template", "q3": "dataset"}
    assert backend.calls == [{"max_new_tokens": 96, "temperature": 0.0, "seed": 0}]  # one greedy batch
    lines = [json.loads(line) for line in open(cache)]
    assert [(d["id"], d["source"], d["check"]) for d in lines] == [("q1", "model", "ok"), ("q2", "template", "names_an_option")]
    assert lines[1]["model_output"].endswith("Ultrasound?") and lines[1]["original"] == q2["question"]
    again = Rephraser()
    assert report.collect_rephrasings([q1, q2, yn], cache=cache, backend=again, generate=True)[0] == found
    assert again.asked == 0  # read back from the cache
    # no model: templates; a --rephrase-file line wins over everything
    (tmp_path / "mine.jsonl").write_text(json.dumps({"id": "q1", "question": "My own rewording?"}) + "\n")
    found, source = report.collect_rephrasings([q1, q2], rephrase_file=str(tmp_path / "mine.jsonl"), generate=True)
    assert found["q1"] == "My own rewording?" and source == {"q1": "file", "q2": "template"}


def test_rephrase_analysis_reports_the_change_and_the_per_question_consistency():
    base = [row("a", True), row("b", False), row("c", True), row("d", True)]
    reph = [row("a#rephrase", True), row("b#rephrase", True), row("c#rephrase", False), row("d#rephrase", True)]
    for r in reph:
        r["base_id"] = r["id"].split("#")[0]
    res = report.compare_rows(base, reph)
    assert (res["delta"], res["consistency"]) == (0.0, 0.5)  # same accuracy, but half the verdicts flipped
