"""Tests for summary.py: summaries (MultiMedEval's aggregates, instruction following,
positional bias), the analyses against the base run, chain-of-thought samples grouped by
clinical skill, and the Table-1-shaped Markdown.

    python -m pytest -q tests/test_summary.py
"""
import json
import math

import pytest

import evaluate as ev
import summary
from test_robustness import MC, row  # one multiple-choice record and the rows a run writes


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
    s = summary.summarize(rows)
    assert (s["n_closed"], s["n_open"], s["closed_accuracy"], s["open_recall"], s["open_accuracy"]) == \
        (2, 2, 1 / 2, (1 + 1 / 3) / 2, 1 / 2)
    assert (s["accuracy"], s["recall"]) == (2 / 4, (1 + 0 + 1 + 1 / 3) / 4)
    assert s["bleu1"] == (1 + 0 + 1 / 2 + math.exp(-2)) / 4

    def mme_f1(p, r):  # MultiMedEval's per-item F1
        return 2 * p * r / (p + r + 1e-8)
    f1 = (mme_f1(1, 1) + mme_f1(0, 0) + mme_f1(1 / 2, 1) + mme_f1(1, 1 / 3)) / 4
    assert s["f1"] == pytest.approx(f1, rel=0, abs=1e-8)  # ours has no 1e-8: each item's F1 < 5e-9 above
    table = summary.table_md([("run", {"benchmarks": {"vqa_rad": {"base": s, "analyses": {}}}})]).splitlines()
    assert "| run | VQA-RAD | 50.00 | 66.67 | 50.00 | 40.88 | 54.17 | 50.00 |" in table


def test_summary_has_instruction_following_and_positional_bias():
    rows = [row("a", True, kind="mc", parsed="A", gold="A", category="single_letter"),
            row("b", False, kind="mc", parsed="A", gold="B", category="cot"),
            row("c", False, kind="mc", parsed=None, gold="B", category="invalid"),
            row("d", True, kind="mc", parsed="A", gold="B", category="cot", flags=["judged"], judge_parsed="B"),
            {"id": "e", "base_id": "e", "flags": ["missing_image"], "correct": None}]
    s = summary.summarize(rows)
    assert (s["n"], s["n_scored"], s["n_missing_image"], s["n_mc"]) == (5, 4, 1, 4)
    assert s["accuracy"] == s["mc_accuracy"] == 0.5 and s["invalid_rate"] == 0.25 and s["judged"] == 1
    assert s["categories"] == {"single_letter": 0.25, "answer_prefixed": 0.0, "cot": 0.5, "other": 0.0,
                               "invalid": 0.25}
    # the letters chosen as finally read: where the judge read an answer, its letter
    assert s["chosen_letters"] == {"A": 2, "B": 1, "invalid": 1} and s["gold_letters"] == {"A": 1, "B": 3}
    z = row("f", False, kind="mc", parsed="A", gold="B", category="cot", flags=["judged"], judge_parsed=None)
    assert summary.summarize([z])["chosen_letters"] == {"none": 1}  # the judge read no option; the rules did


def test_analyses_compare_each_variant_with_base(tmp_path):
    base = [row("m", True, kind="mc"), row("v", True, kind="vqa")]
    per = {"base": base, "shuffle": [row("m#shuffle", False, kind="mc")],
           "rephrase": [row("v#rephrase", True, kind="vqa")],
           "circular": [row("m#rot0", True), row("m#rot1", False), row("n#rot0", True), row("n#rot1", True)]}
    res = summary.analyses(per, str(tmp_path))
    assert res["shuffle"]["n"] == 1 and res["shuffle"]["right_to_wrong"] == ["m"]  # only multiple-choice rows
    assert res["rephrase"]["n"] == 1 and res["rephrase"]["delta"] == 0.0
    assert res["circular"] == {"n": 2, "n_incomplete": 0, "circular_accuracy": 0.5, "rotation_accuracy": 0.75}


def test_circular_eval_leaves_out_questions_with_an_unscored_rotation(tmp_path):
    """As VLMEvalKit's CircularEval, a question needs every rotation: 'm' is right in the two it
    has, but its third failed (backend error), so it is left out and counted, not counted right."""
    per = {"circular": [row("m#rot0", True), row("m#rot1", True), row("m#rot2", None, flags=["error"]),
                        row("n#rot0", True), row("n#rot1", False)]}
    res = summary.analyses(per, str(tmp_path))
    assert res["circular"] == {"n": 1, "n_incomplete": 1, "circular_accuracy": 0.0, "rotation_accuracy": 0.5}


def grounding_runs():
    """Five questions: 'a' and 'c' scored in both runs; 'b' without its base answer (image
    missing: that row has no groups), 'd' never asked with the grounding prompt, and 'e', the
    only Neurology question, without its grounding answer (backend error)."""
    derm, eye, neuro = {"department": "Dermatology"}, {"department": "Ophthalmology"}, {"department": "Neurology"}
    base = [row("a", True, groups=derm), row("b", None, flags=["missing_image"]), row("c", False, groups=eye),
            row("d", True, groups=eye), row("e", True, groups=neuro)]
    grounding = [row("a", True, groups=derm), row("b", True, groups=derm), row("c", True, groups=eye),
                 row("e", None, flags=["error"])]
    return base, grounding


def test_grounding_by_group_counts_the_questions_it_could_not_compare(tmp_path):
    base, grounding = grounding_runs()
    res = summary.grounding_by_group(base, grounding, str(tmp_path / "g.md"))
    assert (res["overall"]["all"]["n"], res["overall"]["all"]["n_not_compared"]) == (2, 3)
    assert res["department"] == {  # no group of n 0: neither Neurology nor '(no value)' for the failed row
        "Dermatology": {"n": 1, "accuracy_base": 1.0, "accuracy_variant": 1.0, "delta": 0.0},
        "Ophthalmology": {"n": 1, "accuracy_base": 0.0, "accuracy_variant": 1.0, "delta": 1.0}}
    assert "2 of 5 questions compared; 3 not (in one run only, or unscored in either)." in \
        (tmp_path / "g.md").read_text()


def test_grounding_by_group_shows_which_group_lost_a_question(tmp_path):
    """'b' belongs to Dermatology by its grounding row, its failed base row having no groups."""
    base, grounding = grounding_runs()
    summary.grounding_by_group(base, grounding, str(tmp_path / "g.md"))
    lines = (tmp_path / "g.md").read_text().splitlines()
    assert "| department | Dermatology | 1 of 2 | 100.00 | 100.00 | 0.00 |" in lines
    assert "| department | Ophthalmology | 1 of 2 | 0.00 | 100.00 | 100.00 |" in lines
    assert not any(summary.NO_VALUE in line or "Neurology" in line for line in lines)


def test_cot_samples_grouped_by_skill(tmp_path):
    qs = ["What imaging modality is shown?", "Where is the lesion located?", "What is the shape of the lesion?",
          "Which of the following is most likely?", "What does the arrow point to?"]
    rows = [{**ev.score_row({**MC, "id": f"q{i}", "question": q, "answer": "A", "options": {"A": "x", "B": "y"}},
                            "p", "Thinking. <answer>A</answer>")} for i, q in enumerate(qs)]
    rows[1].update(flags=["judged"], judge_parsed=None, correct=False)  # as if the judge had read no option
    res = summary.cot_report(rows, str(tmp_path / "cot.md"))
    assert [res[name]["n"] for name, _ in summary.SKILLS] == [1, 1, 1, 1, 1]
    assert [res[name]["accuracy"] for name, _ in summary.SKILLS] == [1.0, 0.0, 1.0, 1.0, 1.0]
    text = (tmp_path / "cot.md").read_text()
    assert "## modality recognition (1 samples, accuracy 100.00)" in text
    assert "**q0** gold A, parsed A\n" in text and "**q1** gold A, parsed A, judge none\n" in text
    assert summary.skill_of({"question": "What is seen?", "meta": {"skill": "anatomical localization"}}) == \
        "anatomical localization"
    assert summary.skill_of({"question": "What is seen?", "skill": "side"}) == \
        "anatomical localization"  # synthetic name


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
    lines = summary.table_md([("Infi-Med-3B", s1), ("Qwen2.5-VL-3B", s2)]).splitlines()
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


def test_table_shows_answers_cut_by_the_budget_next_to_invalid():
    """One answer in four ran into the token budget and reads as no option: Invalid % includes it,
    the column beside it and the note say so. A run with none cut shows 0.00."""
    rows = [row("a", True, kind="mc", parsed="A", gold="A", category="single_letter"),
            row("b", False, kind="mc", parsed=None, gold="B", category="invalid", flags=["truncated"]),
            row("c", False, kind="mc", parsed=None, gold="B", category="invalid"),
            row("d", True, kind="mc", parsed="B", gold="B", category="single_letter")]
    cut = summary.summarize(rows)
    whole = summary.summarize([{**r, "flags": []} for r in rows])
    runs = [(name, {"benchmarks": {"pmc_vqa": {"base": s, "analyses": {"shuffle": {"n": 4, "delta": 0.0}}}}})
            for name, s in (("cut", cut), ("whole", whole))]
    lines = summary.table_md(runs).splitlines()
    assert "| Model | Benchmark | Single letter % | Answer-prefixed % | CoT-style % | Other % | Invalid % | " \
           "Cut by budget % |" in lines
    assert "| cut | PMC-VQA | 50.00 | 0.00 | 0.00 | 0.00 | 50.00 | 25.00 |" in lines
    assert "| whole | PMC-VQA | 50.00 | 0.00 | 0.00 | 0.00 | 50.00 | 0.00 |" in lines
    assert "| Model | Benchmark | Invalid % | Cut by budget % | Shuffle Δ | CircularEval | Rephrase Δ | " \
           "Grounding Δ |" in lines
    assert "| cut | PMC-VQA | 50.00 | 25.00 | 0.00 | - | - | - |" in lines
    assert lines[-1].startswith("Cut by budget %: answers the token budget (--max-new-tokens) cut off, of all "
                                "scored answers. Invalid % includes those of them no answer could be read from")


def test_table_says_how_many_questions_circular_eval_left_out():
    circular = {"n": 3, "n_incomplete": 1, "circular_accuracy": 2 / 3, "rotation_accuracy": 0.8}
    lines = summary.table_md([("m", {"benchmarks": {"pmc_vqa": {"base": {"accuracy": 0.7},
                                                                "analyses": {"circular": circular}}}})]).splitlines()
    assert "| m | PMC-VQA | - | - | 66.67 (1 incomplete) | - | - |" in lines
    assert lines[-1].startswith("CircularEval: questions right in every rotation, of those with every rotation scored")


def test_table_gives_both_accuracies_where_a_judge_read_answers():
    judged = {"accuracy": 0.6, "accuracy_rules": 0.5, "judged": 3}
    runs = [("m", {"benchmarks": {"mmmu": {"base": judged, "analyses": {}},
                                  "pmc_vqa": {"base": {"accuracy": 0.7, "accuracy_rules": 0.7, "judged": 0},
                                              "analyses": {}}}})]
    lines = summary.table_md(runs).splitlines()
    assert lines[2] == "| m | 70.00 | 60.00 |"  # Table 1: PMC-VQA, then MMMU with the judge
    i = lines.index("| Model | Benchmark | Accuracy, rules only | Accuracy, rules + judge | Judged answers |")
    assert lines[i + 2:] == ["| m | MMMU(H&M) | 50.00 | 60.00 | 3 |"]  # PMC-VQA had no judge


@pytest.mark.parametrize("benchmark", ["vqa_rad", "slake", "path_vqa"])
def test_table_1_reports_closed_question_accuracy_for_the_multimedeval_benchmarks(benchmark):
    """The paper's VQA-RAD, SLAKE and Path-VQA numbers are MultiMedEval's closed-question accuracy."""
    base = {"accuracy": 0.5, "closed_accuracy": 0.8, "open_recall": 0.3, "open_accuracy": 0.2, "bleu1": 0.1, "f1": 0.2}
    lines = summary.table_md([("m", {"benchmarks": {benchmark: {"base": base, "analyses": {}}}})]).splitlines()
    assert lines[2] == "| m | 80.00 |"


def test_group_labels_match_the_axis_columns_whatever_their_case():
    """VLMEvalKit's GMAI-MMBench TSV names its columns in lower case ('clinical vqa task'); an
    empty cell is no label."""
    meta = {"clinical vqa task": "Disease Diagnosis", "DEPARTMENT": "Dermatology", "perceptual granularity": "",
            "subject": "Pharmacy"}
    assert summary.group_labels(meta) == {"clinical VQA task": "Disease Diagnosis", "department": "Dermatology",
                                          "subject": "Pharmacy"}


def test_mmmu_groups_by_its_subject_and_by_its_own_finer_subfield():
    """The paper's 'subfields' are MMMU's subjects (Diagnostics_and_Laboratory_Medicine); MMMU's
    own `subfield` column (Pathology, ...) is reported as a second axis."""
    meta = {"subject": "Diagnostics_and_Laboratory_Medicine", "subfield": "Pathology", "img_type": "['Photos']"}
    assert summary.group_labels(meta) == {"subject": "Diagnostics_and_Laboratory_Medicine", "subfield": "Pathology"}


def test_by_group_counts_rows_without_a_value_on_an_axis():
    rows = [{"correct": True, "groups": {"department": "Dermatology"}}, {"correct": False, "groups": {}},
            {"correct": True}]
    assert summary.by_group(rows) == {"department": {"Dermatology": {"n": 1, "accuracy": 1.0},
                                                     summary.NO_VALUE: {"n": 2, "accuracy": 0.5}}}


def test_every_benchmark_has_a_table_column():
    assert list(summary.COLUMNS) == list(ev.BENCHMARKS)


def test_compare_reads_run_directories_and_says_what_made_each_run(tmp_path):
    for name, acc in (("base", 0.5), ("trained", 0.75)):
        (tmp_path / name).mkdir()
        run = {"run": {"name": name, "model": f"ckpt/{name}", "backend": "native", "dtype": "bfloat16",
                       "code_version": "0123456789abcdef"}, "benchmarks": {"pmc_vqa": {"base": {"accuracy": acc}}}}
        (tmp_path / name / "summary.json").write_text(json.dumps(run))
    assert summary.compare([str(tmp_path / "base"), str(tmp_path / "trained")]).splitlines() == \
        ["| Model | PMC-VQA |", "|---|---|", "| base | 50.00 |", "| trained | 75.00 |", "",
         "| Model | Checkpoint | Backend | dtype | Judge | Code |", "|---|---|---|---|---|---|",
         "| base | ckpt/base | native | bfloat16 | - | 0123456789ab |",
         "| trained | ckpt/trained | native | bfloat16 | - | 0123456789ab |"]


def test_compare_says_where_runs_read_their_answers_differently():
    """A judge read MMMU's answers in one run and not in the other, and the code differed: the
    Table 1 numbers are not read alike, and the comparison says so."""
    judged = {"run": {"name": "a", "judge_model": "ckpt/judge", "code_version": "aaa"},
              "benchmarks": {"mmmu": {"base": {"accuracy": 0.6, "accuracy_rules": 0.5, "judged": 3}},
                             "pmc_vqa": {"base": {"accuracy": 0.5, "judged": 0}}}}
    alone = {"run": {"name": "b", "code_version": "bbb"},
             "benchmarks": {"mmmu": {"base": {"accuracy": 0.5, "judged": 0}}, "pmc_vqa": {"base": {"accuracy": 0.5}}}}
    lines = summary.runs_md([("a", judged), ("b", alone)]).splitlines()
    assert "| a | - | - | default | ckpt/judge (native) | aaa |" in lines
    assert "MMMU(H&M): a judge read answers in a and none in b: set b's Table 1 number against a's 'Accuracy, " \
        "rules only' above; the paired comparison reads both by the rules." in lines
    assert not any(line.startswith("PMC-VQA") for line in lines)
    assert lines[-1].startswith("The runs were scored by different versions of this code")
    older = {"run": {"name": "c"}, "benchmarks": {"mmmu": {"base": {"accuracy": 0.5}}}}  # names no code version
    assert not any(line.startswith("The runs") for line in summary.runs_md([("a", judged), ("c", older)]).splitlines())


# ----------------------------------------------------------------- uncertainty of the numbers
def test_wilson_interval_of_a_proportion():
    """The 95% Wilson score interval, by its textbook value for 8 of 10; none for no items."""
    lo, hi = summary.wilson(8, 10)
    assert abs(lo - 0.4902) < 1e-4 and abs(hi - 0.9433) < 1e-4  # measured: 0.49016, 0.94332
    assert summary.wilson(10, 10)[1] == 1.0 and summary.wilson(0, 10)[0] == 0.0 and summary.wilson(0, 0) is None


@pytest.mark.parametrize("b,c,p", [(1, 6, 16 / 128), (0, 0, 1.0), (3, 3, 1.0), (0, 10, 2 / 1024)])
def test_mcnemar_exact_p_value(b, c, p):
    """Two-sided binomial test of b against b + c at one half: 1 vs 6 gives 2 * (1 + 7) / 2**7."""
    assert math.isclose(summary.mcnemar(b, c), p)


def test_summaries_carry_the_interval_of_their_accuracy_and_the_table_shows_it():
    items = [("Yes", "yes"), ("No", "yes"), ("yes", "yes"), ("lobe", "right lower lobe")]
    rows = [ev.score_row({**MC, "id": f"v{i}", "options": None, "answer": gold}, "p", pred)
            for i, (pred, gold) in enumerate(items)]
    s = summary.summarize(rows)
    assert s["closed_accuracy_ci95"] == summary.wilson(2, 3) and s["accuracy_ci95"] == summary.wilson(2, 4)
    lines = summary.table_md([("m", {"benchmarks": {"vqa_rad": {"base": s}, "pmc_vqa": {"base": {"accuracy": 0.5}}}})])
    lo, hi = (f"{100 * x:.2f}" for x in summary.wilson(2, 3))
    assert f"| m | {lo}-{hi} | - |" in lines.splitlines()  # VQA-RAD by its closed questions; PMC-VQA gave none


def test_compare_pairs_a_judged_run_with_an_unjudged_one_by_the_rules(tmp_path):
    """The same answers, read by a judge in one run only: compared by the judge's reading they
    would differ on every judged question; by the rules', which read both, they agree."""
    for name, judged in (("base", False), ("trained", True)):
        (tmp_path / name / "mmmu").mkdir(parents=True)
        (tmp_path / name / "summary.json").write_text(json.dumps({"run": {"name": name}, "benchmarks": {}}))
        rows = [{"id": f"q{i}", "correct_rules": False, "correct": judged, "flags": ["judged"] if judged else []}
                for i in range(6)]
        (tmp_path / name / "mmmu" / "base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = summary.paired_md([str(tmp_path / "base"), str(tmp_path / "trained")], ["base", "trained"]).splitlines()
    assert lines[-1] == "| MMMU(H&M) (rules only) | trained vs base | 6 | +0.00 | 0 | 0 | 1 |"


def test_compare_pairs_each_run_with_the_first_on_the_questions_both_scored(tmp_path):
    """base right on q0-q5, trained on q2-q9; q10 unscored in trained: 10 paired questions, 2
    right only in base, 4 only in trained (+20 points, p = 2 * 22 / 64)."""
    for name, right in (("base", range(0, 6)), ("trained", range(2, 10))):
        (tmp_path / name / "pmc_vqa").mkdir(parents=True)
        run = {"run": {"name": name}, "benchmarks": {"pmc_vqa": {"base": {"accuracy": len(right) / 10}}}}
        (tmp_path / name / "summary.json").write_text(json.dumps(run))
        rows = [{"id": f"q{i}", "correct": i in right} for i in range(10)]
        rows.append({"id": "q10", "correct": True if name == "base" else None})
        (tmp_path / name / "pmc_vqa" / "base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = summary.compare([str(tmp_path / "base"), str(tmp_path / "trained")]).splitlines()
    assert lines[-1] == f"| PMC-VQA | trained vs base | 10 | +20.00 | 4 | 2 | {2 * 22 / 64:.3g} |"
