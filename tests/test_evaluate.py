"""Tests for evaluate.py: prompts, the scoring of one sample (flags, boxes, the judge), which
records each variant asks, resumable runs, and an end-to-end run of the native backend with a
tiny random Qwen2.5-VL checkpoint on real VQA-RAD records and on the synthetic benchmark (the
answer parser is tested in test_answers.py, the scorer in test_vqa.py, the robustness variants in
test_robustness.py, summaries and tables in test_summary.py).

    python -m pytest -q tests/test_evaluate.py
"""
import gzip
import json
import os
import subprocess
import sys

import click
import pytest

import conftest
import evaluate as ev
import summary
from prompts import JUDGE_PROMPT, format_options


# ----------------------------------------------------------------- prompts
def rec(answer, options=None, question="Is there a fracture?", id="q1"):
    return {"id": id, "question": question, "answer": answer, "options": options, "images": ["a.png"], "meta": {}}


def test_yes_no_prefix_for_every_gold_scored_as_yes_no():
    assert ev.build_prompt(rec("Yes"), ev.template_for(rec("Yes"))) == \
        "<image>Answer the following question with yes or no. Is there a fracture?"
    r = rec("yes, left side")
    assert ev.template_for(r) == "open" and ev.build_prompt(r, "open") == "<image>Is there a fracture?"
    # a gold the scorer reads as yes/no ('Yes.', ' NO ') is asked as a yes/no question
    assert [ev.template_for(rec(g)) for g in ("Yes.", " NO ", "yes!")] == ["closed"] * 3
    assert [ev.score_row(rec(g), "p", "yes")["closed"] for g in ("Yes.", " NO ", "yes!")] == [True] * 3


def test_multiple_choice_and_cot_prompts():
    r = rec("B", {"A": "CT", "B": "MRI", "C": "X-ray"}, "Which modality?")
    assert ev.build_prompt(r, "mc") == ("<image>Which modality?\nA. CT\nB. MRI\nC. X-ray\n"
                                        "Answer with the option's letter from the given choices directly.")
    cot = ev.build_prompt(r, ev.template_for(r, cot=True))
    assert "(A, B, and C)" in cot and "<answer>A</answer>" in cot and cot.endswith("C. X-ray")
    assert ev.build_prompt(r, "mc", grounding=True).endswith("as [x1, y1, x2, y2] in pixel coordinates.")


def test_prompt_renders_through_training_chat_code():
    import data
    text = data.render_chat([{"role": "user", "content": ev.build_prompt(rec("no"), "closed")}],
                            add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>Answer the following" in text
    assert text.endswith("<|im_start|>assistant\n")


# ----------------------------------------------------------------- scoring of one sample
@pytest.mark.parametrize("response,invalid", [
    ("Yes.", False), ("no", False), ("There is not any fracture.", False),  # one answer word ('not' is no)
    ("Yes, there is no fracture.", False),   # both words, but it opens with its answer
    ("Maybe.", True), ("", True), ("I cannot tell from this image.", True),  # neither word
    ("**Yes**", True),                       # the scorer cannot read it either
    ("Yes and no.", True), ("Yes/No", True), ("It could be yes or no.", True),  # both: a hedge
    ("Hard to say: yes on the left, no on the right.", True),  # both, and it does not open with either
])
def test_yes_no_answers_that_give_neither_or_both_are_flagged_invalid(response, invalid):
    """The instruction-following flag of yes/no questions (the scorer counts 'Yes and no.' right
    whatever the gold, so the flag is what exposes such hedges)."""
    row = ev.score_row(rec("no"), "p", response)
    assert row["kind"] == "vqa" and row["closed"] and row["invalid"] is invalid


def test_open_questions_carry_no_yes_no_flag_and_the_rate_counts_closed_ones_only():
    rows = [ev.score_row(rec("no", id="a"), "p", "Maybe."), ev.score_row(rec("yes", id="b"), "p", "Yes"),
            ev.score_row(rec("left lung", id="c"), "p", "Maybe.")]
    assert "invalid" not in rows[2]
    assert summary.summarize(rows)["yes_no_invalid_rate"] == 0.5  # 1 of the 2 closed rows


def test_a_multiple_choice_answer_is_read_with_its_question():
    """'Which ... is NOT ...': the option the response says does not hold is its answer, as a
    grader reading the question would score it; the rule that decided is kept in the row."""
    r = rec("D", {"A": "pRb", "B": "FHIT", "C": "PTCH", "D": "c-erbB1"}, "Which of these is not a tumor suppressor?")
    row = ev.score_row(r, "p", "pRb, FHIT and PTCH are all tumor suppressors.\nc-erbB1 is not a tumor suppressor.")
    assert (row["parsed"], row["rule"], row["correct"], row["category"]) == ("D", "denied", True, "cot")


def test_every_row_carries_the_clinical_skill_its_question_exercises():
    questions = {"What imaging modality is shown?": "modality recognition",
                 "Where is the lesion located?": "anatomical localization",
                 "Is the mass abnormal?": "disease feature interpretation",
                 "Which of the following is most likely?": "option comparison reasoning",
                 "Is this the image asked about?": "question-image alignment"}
    rows = [ev.score_row(rec("yes", question=q), "p", "yes") for q in questions]
    assert [r["clinical_skill"] for r in rows] == list(questions.values())


def test_boxes_do_not_reach_the_scorer():
    row = ev.score_row(rec("B", {"A": "1", "B": "2"}), "p", "B [1, 2, 30, 40]", grounding=True)
    assert row["parsed"] == "B" and row["box"] == (1, 2, 30, 40)


def test_a_grounded_answer_is_scored_against_the_gold_box():
    """A record whose meta carries a gold box gets the IoU of the answer's box (either box syntax);
    an answer without a box counts in the box rate, not in the mean IoU."""
    gold = {**rec("yes"), "meta": {"bbox": [0, 0, 10, 10]}}
    rows = [ev.score_row(gold, "p", "Yes [2, 2, 6, 6]", grounding=True),
            ev.score_row(gold, "p", "Yes <|box_start|>(0,0),(10,10)<|box_end|>", grounding=True),
            ev.score_row(gold, "p", "Yes", grounding=True)]
    assert [(r["box"], r.get("iou")) for r in rows] == [((2, 2, 6, 6), 0.16), ((0, 0, 10, 10), 1.0), (None, None)]
    assert all(r["correct"] and r["precision"] == 1 for r in rows)  # the box numbers are not answer words
    s = summary.summarize(rows)
    assert s["box_rate"] == 2 / 3 and s["mean_iou"] == (0.16 + 1.0) / 2


# ------------------------------------------------- the LLM judge for answers the rules cannot read or only infer
MC = rec("C", {"A": "X-ray", "B": "MRI", "C": "CT", "D": "Ultrasound", "E": "PET"}, "Which modality?")


class LetterJudge:
    def __init__(self, reply):
        self.reply, self.prompts, self.calls = reply, [], []

    def generate(self, requests, **kw):
        self.prompts += [r["messages"][0]["content"] for r in requests]
        self.calls.append(kw)
        return [[self.reply] for _ in requests]


def test_judge_reads_what_the_rules_left_and_keeps_the_rules_verdict():
    """After VLMEvalKit's protocol: rules first, the judge for the rest. The rules' reading (parsed,
    invalid, correct_rules) stays, so the invalid rate still measures instruction following,
    and the summary gives both accuracies."""
    r = {**MC, "options": {"A": "X-ray", "B": "MRI", "C": "CT"}, "answer": "C"}
    rows = [ev.score_row(r, "p", "It looks like a cross-sectional density scan."), ev.score_row(r, "p", "B")]
    judge = LetterJudge(" C.")
    ev.judge_rows(judge, rows)
    assert len(judge.prompts) == 1 and "Which modality?" in judge.prompts[0] and "C. CT" in judge.prompts[0]
    assert judge.calls == [{"max_new_tokens": 32, "temperature": 0.0, "seed": 0}]  # greedy, whatever the run samples
    assert rows[0]["judge_parsed"] == "C" and rows[0]["correct"] and rows[0]["flags"] == ["judged"]
    assert rows[0]["parsed"] is None and rows[0]["invalid"] and rows[0]["correct_rules"] is False
    assert rows[1]["flags"] == [] and rows[1]["parsed"] == "B" and rows[1]["rule"] == "exact"
    s = summary.summarize(rows)
    assert (s["accuracy"], s["accuracy_rules"], s["invalid_rate"], s["judged"]) == (0.5, 0.0, 0.5, 1)
    rows = [ev.score_row(r, "p", "no idea")]
    ev.judge_rows(LetterJudge("Z"), rows)  # the judge found no option either
    assert rows[0]["parsed"] is None and rows[0]["flags"] == ["judged"] and summary.summarize(rows)["judged"] == 1


def test_the_judge_also_reads_choices_the_rules_only_inferred_from_prose():
    """A choice the rules infer (an option named by its text, a last sentence that concludes, a
    letter met once, a review's verdict), in an <answer> tag or not, is the judge's to read; one
    the answer states ('The answer is C', '<answer>C</answer>', or on its first line: 'C. CT' and
    then why) stays the rules'. Where the judge gives no verdict, the rules' reading counts."""
    inferred = ["The slices are cross-sectional. So this is a CT.",
                "An X-ray shows bone, an ultrasound shows nothing here.\nTherefore, the scan is CT.",
                "The slices are axial. C fits them best.",
                "A) X-ray: This is not the best choice.\nC) CT: This is the best choice.",
                "Thinking.\n<answer>C fits the slices best.</answer>",
                "C. CT: the right first look.\nD. Ultrasound: better for this soft tissue.\nSo CT.",  # a review
                "Option C, as the slices are axial.", "CT scan",  # short, but no stated answer: the judge reads them
                "C\n\nOn reflection, ultrasound is the better first test."]  # a first line the rest takes back
    stated = ["The answer is C.", "<answer>C</answer>", "C. CT\n\nThe slices are axial, typical of CT.",
              "**C**\n\nAxial slices.", "Answer: \\( \\boxed{C} \\)"]
    rows = [ev.score_row(MC, "p", text) for text in inferred + stated]
    assert [r["rule"] for r in rows] == ["option_text", "conclusion", "letter", "verdict", "answer_tag:letter",
                                         "verdict", "letter", "option_text", "letter", "cue", "answer_tag:exact",
                                         "letter", "letter", "cue"]
    judge = LetterJudge("Z")
    assert ev.judge_rows(judge, rows) == 9 and len(judge.prompts) == 9
    assert [r["flags"] for r in rows] == [["judged"]] * 9 + [[]] * 5
    assert [r["correct"] for r in rows] == [False] * 9 + [True] * 5  # the judge's reading, where it read
    assert all(r["parsed"] == "C" and r["correct_rules"] for r in rows)
    failed = [ev.score_row(MC, "p", inferred[0])]
    ev.judge_rows(TriesJudge(Exception), failed)
    assert failed[0]["flags"] == ["judge_error"] and failed[0]["correct"]


def test_the_judge_reads_a_grounding_answer_without_its_boxes():
    """The box's numbers must not reach any reader of the answer, the judge included."""
    row = ev.score_row(MC, "p", "The mass at [12, 40, 88, 120] is dense; no option fits well.", grounding=True)
    judge = LetterJudge("Z")
    ev.judge_rows(judge, [row])
    assert row["box"] == (12.0, 40.0, 88.0, 120.0) and "[12, 40, 88, 120]" in row["response"]
    assert "is dense; no option fits well." in judge.prompts[0] and "[12, 40" not in judge.prompts[0]
    only_box = ev.score_row(MC, "p", "[12, 40, 88, 120]", grounding=True)  # no answer to read
    assert only_box["parsed"] is None and ev.judge_rows(LetterJudge("C"), [only_box]) == 0


@pytest.mark.parametrize("reply", ["C", " C.", "**C**", "(C) CT", "C. CT", "The answer is C.", "Answer: C", "CT"])
def test_the_judge_reply_is_read_as_an_answer_is(reply):
    assert ev.judge_letter(reply, MC["options"]) == "C"


@pytest.mark.parametrize("reply,letter", [("Z", "Z"), ("**Z**", "Z"), ("Z.", "Z"), ("Answer: Z", "Z"),
                                          ("Z\n\nThe answer names no option.", "Z"), ("F", None), ("C or D", None),
                                          ("I am not sure.", None)])
def test_the_judge_reply_z_says_no_option_and_others_are_unreadable(reply, letter):
    assert ev.judge_letter(reply, {k: MC["options"][k] for k in "ABCD"}) == letter


class TriesJudge:
    """Replies from a list, one per call; a reply of Exception raises for that request."""
    def __init__(self, *replies):
        self.replies, self.calls = list(replies), []

    def generate(self, requests, **kw):
        self.calls.append(kw)
        reply = self.replies.pop(0)
        if reply is Exception:
            raise RuntimeError("prompt longer than the judge's context")
        return [[reply] for _ in requests]


def test_an_unreadable_judge_reply_is_asked_again_sampled_then_flagged():
    """A greedy judge would repeat itself, so the second and third tries sample; after three
    unreadable replies the row keeps the rules' verdict, flagged 'judge_unreadable', and a
    rerun does not ask again."""
    rows = [ev.score_row(MC, "p", "no idea")]
    judge = TriesJudge("maybe", "C. CT")
    assert ev.judge_rows(judge, rows, seed=5) == 1
    assert [(c["temperature"], c["seed"]) for c in judge.calls] == [(0.0, 5), (1.0, 6)]
    assert rows[0]["flags"] == ["judged"] and rows[0]["judge_parsed"] == "C" and rows[0]["correct"]
    rows = [ev.score_row(MC, "p", "no idea")]
    judge = TriesJudge("maybe", "perhaps", "hmm")
    ev.judge_rows(judge, rows)
    assert len(judge.calls) == ev.JUDGE_TRIES == 3
    assert rows[0]["flags"] == ["judge_unreadable"] and rows[0]["judge_response"] == "hmm"
    assert rows[0]["correct"] is False and "judge_parsed" not in rows[0]
    assert ev.judge_rows(TriesJudge(), rows) == 0


def test_a_failed_judge_request_is_flagged_and_the_run_goes_on(tmp_path):
    """One answer the judge backend cannot take costs that row its judgement, not the benchmark."""
    rows = [ev.score_row({**MC, "id": i}, "p", "no idea") for i in ("a", "b")]
    judge = TriesJudge(Exception, "C", Exception)  # the batch fails; then a alone: C; b alone: fails
    assert ev.judge_rows(judge, rows) == 2
    assert rows[0]["flags"] == ["judged"] and rows[0]["correct"]
    assert rows[1]["flags"] == ["judge_error"] and "judge's context" in rows[1]["judge_error"]
    assert rows[1]["correct"] is False


def test_a_run_reports_the_answers_the_judge_gave_no_verdict_on(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    recs = [{**MC, "id": i, "images": [str(img)]} for i in ("a", "b")]
    logged = []
    rows = ev.run_variant(Rambling(), recs, "base", ev.EvalConfig(model="m"), str(tmp_path / "v.jsonl"),
                          judge=TriesJudge(Exception, "C", Exception), log=logged.append)
    assert [r["flags"] for r in rows] == [["judged"], ["judge_error"]]
    assert logged == [f"{tmp_path / 'v.jsonl'}: 2 answers sent to the judge (the rules could not read them or only "
                      "inferred)", f"{tmp_path / 'v.jsonl'}: the judge gave no verdict on 1 answers (0 unreadable "
                      "replies, 1 failed requests); they keep the rules' verdict"]
    s = summary.summarize(rows)
    assert (s["judged"], s["judge_error"], "judge_unreadable" in s) == (1, 1, False)
    table = summary.table_md([("m", {"benchmarks": {"mmmu": {"base": s}}})])
    assert "| m | MMMU(H&M) | 0.00 | 50.00 | 1 (1 failed) |" in table


def test_answers_cut_by_the_token_budget_are_not_judged():
    cut = ev.score_row(MC, "p", ev.Completion("Looking at the scan, the density of the", "length"))
    assert cut["flags"] == ["truncated"] and cut["parsed"] is None
    judge = TriesJudge("C")
    assert ev.judge_rows(judge, [cut]) == 0 and judge.calls == [] and cut["correct"] is False


class ReplayJudge:
    """A judge that gives each prompt the reply stored for it; a prompt with none fails."""
    def __init__(self, replies):
        self.replies = replies

    def generate(self, requests, **kw):
        return [[self.replies[r["messages"][0]["content"]]] for r in requests]


def test_rules_then_judge_on_graded_real_chain_of_thought():
    """The 5,222 graded answers of test_answers.py read as a run with --judge-model reads them:
    the rules first, then, for the 1,677 answers they leave unresolved and the 1,225 they decide
    only by inference from prose (JUDGE_ALSO, not stated first), the reply a judge gave to the
    JUDGE_PROMPT this run sends (stored as `judge_reply`; who the judges were, and why their
    agreement with the graders is likely above a smaller judge's: tests/data/README.md). The rules
    alone agree with the graders on 4,655 answers (4,084 of the 4,650 that conclude in prose), rules
    then judge on 5,114 (4,542). The rules' reading stays beside the judge's, as the invalid rate
    needs it."""
    graded = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "graded_cot.jsonl.gz")
    with gzip.open(graded, "rt", encoding="utf-8") as f:
        graded = [json.loads(line) for line in f]
    rows, replies = [], {}
    for g in graded:
        record = {"id": g["id"], "question": g["question"], "options": g["options"], "answer": "A"}
        rows.append({**ev.score_row(record, "p", g["response"]), "gold": g["label"]})  # agreement with the grader
        rows[-1]["correct"] = rows[-1]["correct_rules"] = rows[-1]["parsed"] == g["label"]
        if "judge_reply" in g:
            replies[JUDGE_PROMPT.format(question=g["question"], response=g["response"],
                                        options=format_options(g["options"]))] = g["judge_reply"]
    assert ev.judge_rows(ReplayJudge(replies), rows) == len(replies) == 2902
    judged = [r for r in rows if r["flags"]]
    assert all(r["flags"] == ["judged"] for r in judged)
    assert sum(r["parsed"] is None for r in judged) == 1677
    assert {r["rule"] for r in rows if not r["flags"]} == {"cue", "denied"}
    prose = [not g["source"].startswith("mmmu") for g in graded]
    assert sum(r["correct_rules"] for r in rows) >= 4655
    assert sum(r["correct_rules"] for r, p in zip(rows, prose) if p) >= 4084
    assert sum(r["correct"] for r in rows) >= 5114
    assert sum(r["correct"] for r, p in zip(rows, prose) if p) >= 4542


# ----------------------------------------------------------------- which records each variant asks
def test_variant_records_per_analysis(tmp_path):
    yn = {**MC, "id": "q2", "options": None, "answer": "yes", "meta": {"question_rephrase": "Is it there?"}}
    null = {**yn, "id": "q3", "meta": {"question_rephrase": "NULL"}}  # VQA-RAD's placeholder: no rephrasing
    recs = [MC, yn, null]
    assert ev.variant_records(recs, "base") == recs and ev.variant_records(recs, "grounding") == recs
    assert ev.variant_records(recs, "cot") == [MC]
    assert [r["id"] for r in ev.variant_records(recs, "shuffle")] == ["q1#shuffle"]
    alike = {**MC, "id": "q4", "options": {"A": "CT", "B": "CT"}}  # no other order to ask it in
    assert [r["id"] for r in ev.variant_records([MC, alike], "shuffle")] == ["q1#shuffle"]
    assert {r["meta"]["base_id"] for r in ev.variant_records([MC, alike], "circular")} == {"q1"}
    assert len(ev.variant_records(recs, "circular")) == 5
    reph = ev.variant_records(recs, "rephrase")
    assert [(r["id"], r["question"], r["meta"]["base_id"]) for r in reph] == [("q2#rephrase", "Is it there?", "q2")]
    path = tmp_path / "reph.jsonl"
    path.write_text(json.dumps({"id": "q1", "question": " Which imaging modality? "}) + "\n")
    assert [r["question"] for r in ev.variant_records(recs, "rephrase", rephrase_file=str(path))] == \
        ["Which imaging modality?", "Is it there?"]


# ----------------------------------------------------------------- runs: resume, tables, imports
class EchoBackend:
    """Answers 'A' to multiple choice and 'yes' otherwise; can be told to fail after k calls."""
    def __init__(self, fail_after=None):
        self.calls, self.seen, self.fail_after = 0, 0, fail_after

    def generate(self, requests, **kw):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.seen += len(requests)
        return [["A" if "option's letter" in r["messages"][0]["content"] else "yes"] for r in requests]


class Rambling(EchoBackend):
    """Answers every question with words no rule reads as an option."""
    def generate(self, requests, **kw):
        self.seen += len(requests)
        return [["It could be several things."] for _ in requests]


def test_killed_run_resumes_without_redoing_samples(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    recs = [{**MC, "id": f"m{i}", "images": [str(img)]} for i in range(10)]
    cfg = ev.EvalConfig(model="m", batch_size=1)  # chunks of 4 samples
    path = str(tmp_path / "base.jsonl")
    with pytest.raises(KeyboardInterrupt):
        ev.run_variant(EchoBackend(fail_after=2), recs, "base", cfg, path)
    with open(path, "a") as f:
        f.write('{"id": "m9", "prom')  # a line cut off by the kill
    b = EchoBackend()
    rows = ev.run_variant(b, recs, "base", cfg, path)
    assert b.seen == 2 and [r["id"] for r in rows] == [f"m{i}" for i in range(10)]
    assert all(json.loads(line)["parsed"] == "A" for line in open(path))


def test_run_hands_invalid_answers_to_the_judge(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    judge = LetterJudge("Z")  # the judge finds no option either
    rows = ev.run_variant(Rambling(), [{**MC, "images": [str(img)]}], "base", ev.EvalConfig(model="m"),
                          str(tmp_path / "v.jsonl"), judge=judge)
    assert len(judge.prompts) == 1 and rows[0]["flags"] == ["judged"] and rows[0]["judge_response"] == "Z"
    assert rows[0]["parsed"] is None and rows[0]["judge_parsed"] is None and rows[0]["correct"] is False


def test_missing_images_are_counted_not_fatal(tmp_path):
    recs = [rec("yes", id="a"), {**rec("no", id="b"), "images": [str(tmp_path / "gone.png")]}]
    (tmp_path / "a.png").write_bytes(b"")
    recs[0]["images"] = [str(tmp_path / "a.png")]
    rows = ev.run_variant(EchoBackend(), recs, "base", ev.EvalConfig(model="m"), str(tmp_path / "v.jsonl"),
                          log=lambda m: None)
    s = summary.summarize(rows)
    assert (s["n"], s["n_scored"], s["n_missing_image"], s["closed_accuracy"]) == (2, 1, 1, 1.0)


def test_vllm_backend_without_vllm_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail, installed or not
    with pytest.raises(RuntimeError, match="requirements-vllm.txt"):
        ev.make_backend("vllm", "some/dir")


def test_importing_evaluate_does_not_import_vllm():
    code = "import sys; import evaluate; assert 'vllm' not in sys.modules and 'vllm_backend' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=conftest.ROOT, check=True)


# ----------------------------------------------------------------- end to end, native backend
def make_tiny_checkpoint(out_dir, texts):
    """A complete tiny Qwen2.5-VL checkpoint directory: random weights (infimed), a BPE tokenizer
    whose special-token ids the config uses, and a preprocessor_config.json (small pixel budget)."""
    import torch
    from demo import synthetic
    from image_processor import ImageProcessor
    from infimed import QwenVL, QwenVLConfig, VisionConfig
    tok = synthetic.build_tokenizer(texts, out_dir, vocab_size=400)
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("bos_token_id", "<|endoftext|>"), ("eos_token_id", "<|im_end|>")]}
    vision = VisionConfig(depth=2, hidden_size=32, out_hidden_size=48, intermediate_size=64, num_heads=2,
                          fullatt_block_indexes=[1], window_size=56)
    cfg = QwenVLConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 2, 2], vision=vision, **ids)
    torch.manual_seed(0)
    QwenVL(cfg).save_pretrained(out_dir)
    ImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model runs faster on one thread than on two contended ones; restored after."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    texts = ["Is there a fracture? Answer the following question with yes or no. Which modality is shown? "
             "Answer with the option's letter from the given choices directly. A. CT B. MRI C. X-ray "
             "D. Ultrasound yes no left right lesion lung brain"] * 10
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")), texts)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from demo import synthetic
    root = str(tmp_path_factory.mktemp("synth"))
    synthetic.generate(root, n_train=0, n_test=12, seed=0, image_size=56, progress=False)
    return root


def test_native_batched_generation_equals_one_by_one(tiny_model, synthetic_root):
    """Sorting by length and left padding must not change greedy outputs."""
    recs = ev.load_benchmark("synthetic", synthetic_root, limit=6)
    reqs = [{"messages": [{"role": "user", "content": ev.build_prompt(r, ev.template_for(r))}], "images": r["images"]}
            for r in recs]
    reqs.append({"messages": [{"role": "user", "content": "Say yes."}], "images": []})  # text-only, shortest
    batched = ev.NativeBackend(tiny_model, batch_size=4).generate(reqs, max_new_tokens=6)
    single = ev.NativeBackend(tiny_model, batch_size=1).generate(reqs, max_new_tokens=6)
    assert batched == single and all(len(o) == 1 and isinstance(o[0], str) for o in batched)


def test_native_prompt_logprobs_match_forward(tiny_model):
    import torch
    b = ev.NativeBackend(tiny_model)
    req = {"messages": [{"role": "user", "content": "Is there a fracture?"}, {"role": "assistant", "content": "no"}],
           "images": []}
    res = b.prompt_logprobs([req])[0]
    ids = torch.tensor([res["token_ids"]])
    logits = b.model(ids)[0].float()
    expect = torch.log_softmax(logits, -1)[2, ids[0, 3]].item()
    assert res["logprobs"][0] is None and abs(res["logprobs"][3] - expect) < 1e-5


def check_jsonl(path):
    rows = [json.loads(line) for line in open(path)]
    for r in rows:
        assert {"id", "base_id", "flags", "correct", "variant"} <= set(r)
        if "missing_image" not in r["flags"]:
            assert {"prompt", "response", "parsed", "gold", "kind"} <= set(r) and isinstance(r["response"], str)
            assert r["prompt"].startswith("<image>")
    return rows


def test_end_to_end_real_vqa_rad_records(tiny_model, tmp_path):
    """451 real VQA-RAD test records: only 18 have their image in ../shared/data; the others are
    reported and counted as missing, the 18 are generated and scored. Counted by hand in the raw
    JSON: 16 of the 18 have the gold yes/no, 10 carry a question_rephrase other than NULL."""
    root = conftest.shared("vqa_rad")
    cfg = ev.EvalConfig(model=tiny_model, out=str(tmp_path / "run"), max_new_tokens=4, batch_size=6,
                        variants=("base", "rephrase"))
    logs = []
    summary = ev.evaluate(cfg, {"vqa_rad": root}, log=logs.append)
    base = summary["benchmarks"]["vqa_rad"]["base"]
    assert (base["n"], base["n_scored"], base["n_missing_image"]) == (451, 18, 433)
    assert (base["n_closed"], base["n_open"]) == (16, 2)
    assert any("433 of 451 samples skipped, image file missing" in m for m in logs)
    rows = check_jsonl(str(tmp_path / "run" / "vqa_rad" / "base.jsonl"))
    assert len(rows) == 451 and len({r["id"] for r in rows}) == 451
    done = [r for r in rows if r["correct"] is not None]
    closed = [r for r in done if r["closed"]]
    assert len(done) == 18 and len(closed) == 16
    for r in closed:  # each verdict by hand: the gold word among the answer's words ('not' also for no)
        words, gold = {w.strip(".,!?") for w in r["response"].lower().split()}, r["gold"].strip(" .").lower()
        assert r["correct"] == (gold in words or (gold == "no" and "not" in words))
        assert r["invalid"] == (not words & {"yes", "no", "not"})
    # the summary's numbers are those of the rows it was made from
    assert base["accuracy"] == sum(r["correct"] for r in done) / 18
    assert base["closed_accuracy"] == sum(r["correct"] for r in closed) / 16
    assert base["yes_no_invalid_rate"] == sum(r["invalid"] for r in closed) / 16
    assert all(r["prompt"].startswith("<image>Answer the following question with yes or no.") for r in closed)
    reph = check_jsonl(str(tmp_path / "run" / "vqa_rad" / "rephrase.jsonl"))
    assert reph and all(r["id"].endswith("#rephrase") for r in reph)
    scored = [r for r in reph if r["correct"] is not None]
    assert len(scored) == 10 and summary["benchmarks"]["vqa_rad"]["analyses"]["rephrase"]["n"] == len(scored)
    saved = json.load(open(tmp_path / "run" / "summary.json"))
    assert saved["run"]["model"] == tiny_model and saved["run"]["backend"] == "native"
    assert saved["run"]["prompts"]["closed"].startswith("{images}Answer the following")
    assert "code_version" in saved["run"] and \
        (tmp_path / "run" / "table.md").read_text().startswith("| Model | VQA-RAD |")


def test_end_to_end_synthetic_with_robustness_and_cli(tiny_model, synthetic_root, tmp_path):
    from click.testing import CliRunner
    out = str(tmp_path / "syn")
    args = ["run", "--model", tiny_model, "--benchmark", "synthetic", "--data-root", synthetic_root,
            "--out", out, "--max-new-tokens", "4", "--shuffle", "--circular", "--grounding", "--name", "tiny"]
    res = CliRunner().invoke(ev._cli(), args)
    assert res.exit_code == 0, res.output
    summary = json.load(open(os.path.join(out, "summary.json")))
    syn = summary["benchmarks"]["synthetic"]
    assert syn["base"]["n_scored"] == syn["base"]["n"] == 12
    n_mc = syn["base"].get("n_mc", 0)
    assert syn["shuffle"]["n"] == n_mc and syn["circular"]["n"] == sum(
        len(r["options"]) for r in check_jsonl(os.path.join(out, "synthetic", "base.jsonl")) if r["kind"] == "mc")
    assert set(syn["analyses"]) >= {"shuffle", "circular", "grounding"}
    grounded = check_jsonl(os.path.join(out, "synthetic", "grounding.jsonl"))
    assert len(grounded) == 12 and syn["grounding"]["box_rate"] == sum(r["box"] is not None for r in grounded) / 12
    assert syn["analyses"]["grounding"]["n"] == 12
    assert sum(v["n"] for v in syn["base"]["by_skill"].values()) == 12
    res2 = CliRunner().invoke(ev._cli(), args)  # rerun: everything resumes, nothing regenerated
    assert res2.exit_code == 0 and len(open(os.path.join(out, "synthetic", "base.jsonl")).readlines()) == 12
    cmp = CliRunner().invoke(ev._cli(), ["compare", out, out])
    assert cmp.exit_code == 0 and cmp.output.splitlines()[0] == "| Model | Synthetic |"
    table1 = cmp.output.split("\n\n")[0].splitlines()
    assert len(table1) == 4 and table1[2].startswith("| tiny | ") and table1[3] == table1[2]


# ----------------------------------------------------------------- benchmark subsets
def test_subset_filters_on_meta_and_rejects_unknown_fields():
    root = conftest.shared("vqa_rad")
    closed = ev.load_benchmark("vqa_rad", root, subset=(("answer_type", "CLOSED"),))
    assert closed and all(r["meta"]["answer_type"] == "CLOSED" for r in closed)
    assert len(ev.load_benchmark("vqa_rad", root, limit=5, subset=(("answer_type", "OPEN"),))) == 5
    with pytest.raises(ValueError, match="no vqa_rad record has a field 'organ'"):
        ev.load_benchmark("vqa_rad", root, subset=(("organ", "HEAD"),))


def test_pmc_vqa_benchmark_is_the_clean_test_set_and_the_full_one_is_asked_by_name(tmp_path):
    header = "Figure_path,Question,Answer,Choice A,Choice B,Choice C,Choice D,Answer_label\n"
    (tmp_path / "test.csv").write_text(header + "".join(f"f{i}.jpg,Full {i}?,CT,A:MRI,B:CT,C:PET,D:US,B\n"
                                                        for i in range(5)))
    (tmp_path / "test_clean.csv").write_text(header + "f0.jpg,Full 0?,CT,A:MRI,B:CT,C:PET,D:US,B\n")
    assert [r["question"] for r in ev.load_benchmark("pmc_vqa", str(tmp_path))] == ["Full 0?"]
    assert len(ev.load_benchmark("pmc_vqa_full", str(tmp_path))) == 5
    open_ = ev.load_benchmark("pmc_vqa_open", str(tmp_path))
    assert [(r["answer"], r["options"]) for r in open_] == [("CT", None)]  # the clean set, options dropped


def test_the_judge_reads_mmmu_and_gmai_mmbench_only_as_the_paper_scores_them(tmp_path, monkeypatch):
    """MMMU and GMAI-MMBench follow VLMEvalKit (rules, then the judge); PMC-VQA follows
    MultiMedEval (rules alone): with --judge-model, only the former reach the judge."""
    import realformat
    realformat.write_mmmu(str(tmp_path))
    pmc = tmp_path / "PMC-VQA"
    realformat.save(realformat.picture(1), str(pmc / "images" / "f.jpg"))
    (pmc / "test_clean.csv").write_text("Figure_path,Question,Answer,Choice A,Choice B,Answer_label\n"
                                        "f.jpg,Which?,CT,A:MRI,B:CT,B\n")

    judge = LetterJudge("Z")
    monkeypatch.setattr(ev, "make_backend", lambda kind, path, **kw: judge)
    cfg = ev.EvalConfig(model="m", out=str(tmp_path / "run"), judge_model="J")
    s = ev.evaluate(cfg, {"mmmu": str(tmp_path / "MMMU"), "pmc_vqa": str(pmc)}, backend=Rambling(), log=lambda m: None)
    assert len(judge.prompts) == 10  # the 10 MMMU items, not the PMC-VQA one
    assert s["benchmarks"]["mmmu"]["base"]["judged"] == 10 and s["benchmarks"]["pmc_vqa"]["base"]["judged"] == 0


def test_a_judge_added_on_resume_reads_the_earlier_rows_and_a_changed_judge_is_refused(tmp_path, monkeypatch):
    """Rerunning a rules-only run with --judge-model judges the rows the rules left, without
    generating again; a run judged by one judge does not continue with another."""
    import realformat
    realformat.write_mmmu(str(tmp_path))

    judge, model = LetterJudge("Z"), Rambling()
    monkeypatch.setattr(ev, "make_backend", lambda kind, path, **kw: judge)
    root, out = {"mmmu": str(tmp_path / "MMMU")}, str(tmp_path / "run")
    s = ev.evaluate(ev.EvalConfig(model="m", out=out), root, backend=model, log=lambda m: None)
    assert (model.seen, len(judge.prompts), s["benchmarks"]["mmmu"]["base"]["judged"]) == (10, 0, 0)
    s = ev.evaluate(ev.EvalConfig(model="m", out=out, judge_model="J"), root, backend=model, log=lambda m: None)
    assert (model.seen, len(judge.prompts), s["benchmarks"]["mmmu"]["base"]["judged"]) == (10, 10, 10)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "mmmu" / "base.jsonl")]
    assert len(rows) == 10 and all(r["flags"] == ["judged"] and r["judge_response"] == "Z" for r in rows)
    s = ev.evaluate(ev.EvalConfig(model="m", out=out, judge_model="J"), root, backend=model, log=lambda m: None)
    assert (model.seen, len(judge.prompts)) == (10, 10)  # nothing left to judge
    for other in ("K", None):
        with pytest.raises(ValueError, match="judge_model"):
            ev.evaluate(ev.EvalConfig(model="m", out=out, judge_model=other), root, backend=model, log=lambda m: None)


# ----------------------------------------------------------------- the README's command on published layouts
class Scripted:
    """A backend that answers from a table: the response of the first key found in the prompt,
    else `default`. It keeps every request and the keyword arguments of every call."""
    def __init__(self, answers, default="A"):
        self.answers, self.default, self.requests, self.calls = answers, default, [], []

    def generate(self, requests, **kw):
        self.requests += requests
        self.calls.append(kw)
        return [[next((a for k, a in self.answers.items() if k in r["messages"][0]["content"]), self.default)]
                for r in requests]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Benchmarks with embedded images, as their publishers lay them out (tests/realformat.py):
    PathVQA parquet (image bytes, JPEG), MMMU parquet (image dicts, PNG), GMAI-MMBench TSV
    (base64 PNG; its row 5 names row 4's image)."""
    import realformat
    root = tmp_path_factory.mktemp("published")
    realformat.write_path_vqa(str(root), leak=realformat.slake_test_item())
    realformat.write_mmmu(str(root))
    realformat.write_gmai_mmbench(str(root))
    return root


def patch_backends(monkeypatch, **by_path):
    """evaluate.make_backend replaced: the backend registered for the model path; the (kind,
    path) of every backend built is kept in the returned list."""
    built = []

    def make(kind, path, **kw):
        built.append((kind, path))
        return by_path[path]
    monkeypatch.setattr(ev, "make_backend", make)
    return built


# PathVQA test items (realformat): sections 60, 62, 64 ask 'Is there fibrosis ...?' (gold yes), 61
# and 63 'What is present ...?' (gold granuloma). GMAI-MMBench: gold B for radiographs 0..5 (B is
# Pneumonia). MMMU: everything else gets 'A', right for 3 of the 10 items ((s + k) % 4 == 0).
ANSWERS = {"section 60?": "Yes.", "section 62?": "No, there is no fibrosis.", "section 64?": "I cannot tell.",
           "section 61?": "A granuloma.", "section 63?": "Fibrosis",
           **{f"radiograph {k} show": "B" for k in (0, 1, 2)}, "radiograph 3 show": "Pneumonia",
           "radiograph 4 show": "A", "radiograph 5 show": "Maybe"}


def test_cli_runs_the_readmes_command_with_a_data_root_per_benchmark(published, tmp_path, monkeypatch):
    """`evaluate.py run --benchmark B --data-root B=DIR ...` (README, step 6) on the published
    layouts: every item read, scored by hand-known answers, Table 1 written and printed."""
    from click.testing import CliRunner
    backend = Scripted(ANSWERS)
    built = patch_backends(monkeypatch, ckpt=backend)
    out = str(tmp_path / "run")
    res = CliRunner().invoke(ev._cli(), [
        "run", "--model", "ckpt", "--out", out,
        "--benchmark", "path_vqa", "--data-root", f"path_vqa={published / 'PathVQA'}",
        "--benchmark", "mmmu", "--data-root", f"mmmu={published / 'MMMU'}",
        "--benchmark", "gmai_mmbench", "--data-root", f"gmai_mmbench={published / 'GMAI-MMBench'}"])
    assert res.exit_code == 0, res.output
    assert built == [("native", "ckpt")]  # no judge without --judge-model
    b = json.load(open(os.path.join(out, "summary.json")))["benchmarks"]
    path = b["path_vqa"]["base"]  # closed: 60 right, 62 wrong, 64 wrong and invalid; open: 61 right, 63 wrong
    assert (path["n"], path["n_closed"], path["n_open"]) == (5, 3, 2)
    assert (path["closed_accuracy"], path["open_recall"], path["open_accuracy"], path["accuracy"],
            path["yes_no_invalid_rate"]) == (1 / 3, 1 / 2, 1 / 2, 2 / 5, 1 / 3)
    assert (b["mmmu"]["base"]["n"], b["mmmu"]["base"]["accuracy"]) == (10, 3 / 10)
    gmai = b["gmai_mmbench"]["base"]  # 0-3 right (3 by its option text), 4 wrong, 5 invalid
    assert (gmai["n"], gmai["accuracy"], gmai["invalid_rate"]) == (6, 4 / 6, 1 / 6)
    table = ["| Model | Path-VQA | MMMU(H&M) | GMAI-MMBench |", "|---|---|---|---|", "| ckpt | 33.33 | 30.00 | 66.67 |"]
    assert open(os.path.join(out, "table.md")).read().splitlines()[:3] == table
    assert f"wrote {out}/summary.json, table.md and per-sample JSONL (3 benchmarks)" in res.output.splitlines()
    assert "\n".join(table) in res.output


def test_cli_data_root_without_a_name_serves_the_other_benchmarks_and_a_missing_one_is_an_error(
        published, tmp_path, monkeypatch):
    from click.testing import CliRunner
    patch_backends(monkeypatch, ckpt=Scripted(ANSWERS))
    args = ["run", "--model", "ckpt", "--out", str(tmp_path / "run"),
            "--benchmark", "mmmu", "--benchmark", "gmai_mmbench"]
    res = CliRunner().invoke(ev._cli(), args + ["--data-root", f"gmai_mmbench={published / 'GMAI-MMBench'}"])
    assert res.exit_code == 2 and "no --data-root for mmmu" in res.output
    res = CliRunner().invoke(ev._cli(), args + ["--data-root", str(published / "MMMU"),
                                                "--data-root", f"gmai_mmbench={published / 'GMAI-MMBench'}"])
    assert res.exit_code == 0, res.output
    b = json.load(open(tmp_path / "run" / "summary.json"))["benchmarks"]
    assert (b["mmmu"]["base"]["n"], b["gmai_mmbench"]["base"]["n"]) == (10, 6)


def test_embedded_benchmark_images_reach_the_backend_pixel_for_pixel(published, tmp_path):
    """Each request carries its item's own image, decoded from the parquet bytes, the parquet
    image dict or the base64 cell: the pixels realformat encoded (PathVQA's after its JPEG
    round trip)."""
    import io
    import re as _re
    import numpy as np
    import realformat
    from PIL import Image

    def expected(prompt):
        if m := _re.search(r"section (\d+)\?", prompt):  # PathVQA: picture(300 + section), JPEG bytes
            return Image.open(io.BytesIO(realformat.encoded(realformat.picture(300 + int(m[1])), "JPEG")))
        if m := _re.search(r"patient (\d)-(\d)", prompt):  # MMMU: picture(600 + 10 s + k), PNG
            return realformat.picture(600 + 10 * int(m[1]) + int(m[2]))
        k = int(_re.search(r"radiograph (\d)", prompt)[1])  # GMAI-MMBench: picture(700 + k); 5 reuses 4's
        return realformat.picture(700 + min(k, 4))
    backend = Scripted(ANSWERS)
    ev.evaluate(ev.EvalConfig(model="m", out=str(tmp_path / "run")),
                {"path_vqa": str(published / "PathVQA"), "mmmu": str(published / "MMMU"),
                 "gmai_mmbench": str(published / "GMAI-MMBench")}, backend=backend, log=lambda m: None)
    assert len(backend.requests) == 5 + 10 + 6
    for r in backend.requests:
        (image,) = r["images"]
        want = np.asarray(expected(r["messages"][0]["content"]).convert("RGB"))
        assert np.array_equal(np.asarray(image.convert("RGB")), want), r["messages"][0]["content"]


def test_cli_judge_model_builds_a_judge_that_reads_what_the_rules_cannot(published, tmp_path, monkeypatch):
    """--judge-model DIR --judge-backend KIND builds a second backend from DIR; it is asked (at
    temperature 0) about the two GMAI-MMBench answers the rules leave unresolved, and its verdict
    counts in the accuracy while the invalid rate stays the rules'."""
    from click.testing import CliRunner
    model = Scripted({"radiograph 2 show": "It could be pneumonia or edema.", "radiograph 3 show": "Hmm.",
                      "radiograph 4 show": "A"}, default="B")
    judge = Scripted({}, default="B")
    built = patch_backends(monkeypatch, ckpt=model, judge_dir=judge)
    out = tmp_path / "run"
    res = CliRunner().invoke(ev._cli(), [
        "run", "--model", "ckpt", "--judge-model", "judge_dir", "--judge-backend", "vllm", "--temperature", "0.7",
        "--benchmark", "gmai_mmbench", "--data-root", str(published / "GMAI-MMBench"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert built == [("native", "ckpt"), ("vllm", "judge_dir")]
    asked = [r["messages"][0]["content"] for r in judge.requests]
    assert len(asked) == 2 and "radiograph 2 show" in asked[0] and "radiograph 3 show" in asked[1]
    assert judge.calls == [{"max_new_tokens": 32, "temperature": 0.0, "seed": 0}]
    rows = [json.loads(line) for line in open(out / "gmai_mmbench" / "base.jsonl")]
    assert [(r["id"], r["judge_parsed"]) for r in rows if "judged" in r["flags"]] == \
        [("gmai_mmbench-2", "B"), ("gmai_mmbench-3", "B")]
    s = json.load(open(out / "summary.json"))["benchmarks"]["gmai_mmbench"]["base"]
    # rules: 0, 1, 5 right, 4 wrong, 2 and 3 unresolved; the judge makes 2 and 3 right
    assert (s["accuracy"], s["accuracy_rules"], s["invalid_rate"], s["judged"]) == (5 / 6, 3 / 6, 2 / 6, 2)


def test_cli_subset_without_a_value_and_rephrase_model_alone(monkeypatch):
    """--subset needs KEY=VALUE (a clear usage error, not a crash); --rephrase-model, as
    --rephrase-file, implies --rephrase."""
    from click.testing import CliRunner
    seen = []
    monkeypatch.setattr(ev, "evaluate", lambda cfg, roots, log: seen.append(cfg) or {"benchmarks": {}})
    res = CliRunner().invoke(ev._cli(), ["run", "--model", "m", "--benchmark", "vqa_rad", "--data-root", "d",
                                         "--subset", "answer_type"])
    assert res.exit_code == 2 and "--subset" in res.output and "KEY=VALUE" in res.output and not seen
    CliRunner().invoke(ev._cli(), ["run", "--model", "m", "--benchmark", "vqa_rad", "--data-root", "d", "--out",
                                   "/nonexistent/x", "--rephrase-model", "reph"])
    assert seen[0].variants == ("base", "rephrase") and seen[0].rephrase_model == "reph"


def test_cli_sampling_settings_reach_the_backend(published, tmp_path, monkeypatch):
    from click.testing import CliRunner
    backend = Scripted(ANSWERS)
    patch_backends(monkeypatch, ckpt=backend)
    res = CliRunner().invoke(ev._cli(), [
        "run", "--model", "ckpt", "--benchmark", "gmai_mmbench", "--data-root", str(published / "GMAI-MMBench"),
        "--out", str(tmp_path / "run"),
        "--temperature", "0.7", "--top-p", "0.9", "--seed", "5", "--max-new-tokens", "12"])
    assert res.exit_code == 0, res.output
    assert backend.calls == [{"temperature": 0.7, "top_p": 0.9, "seed": 5, "max_new_tokens": 12}]


def test_grounding_accuracy_per_mmmu_subject_and_gmai_mmbench_axis(tmp_path):
    """With and without the grounding prompt, accuracy per MMMU Health & Medicine subject and per
    GMAI-MMBench axis, plus overall; every row carries its group labels."""
    import re as _re
    import realformat
    realformat.write_mmmu(str(tmp_path))
    realformat.write_gmai_mmbench(str(tmp_path))

    class GroundedKnowsBetter(EchoBackend):
        """Without the grounding prompt always 'A'; with it, the gold letter (MMMU: option
        (s + k) % 4 for patient s-k, as realformat writes them; GMAI-MMBench: B)."""
        def generate(self, requests, **kw):
            out = []
            for r in requests:
                text = r["messages"][0]["content"]
                m = _re.search(r"patient (\d)-(\d)", text)
                gold = "ABCD"[(int(m.group(1)) + int(m.group(2))) % 4] if m else "B"
                out.append([gold + " [1, 2, 30, 40]" if "bounding box" in text else "A"])
            return out
    cfg = ev.EvalConfig(model="m", out=str(tmp_path / "run"), variants=("base", "grounding"))
    s = ev.evaluate(cfg, {"mmmu": str(tmp_path / "MMMU"), "gmai_mmbench": str(tmp_path / "GMAI-MMBench")},
                    backend=GroundedKnowsBetter(), log=lambda m: None)
    mmmu = s["benchmarks"]["mmmu"]["analyses"]["grounding_by_group"]
    # subjects 0..4 (Basic_Medical_Science .. Public_Health), items k = 0, 1: gold A when (s + k) % 4 == 0
    assert mmmu["subject"]["Basic_Medical_Science"] == {"n": 2, "accuracy_base": 0.5, "accuracy_variant": 1.0,
                                                        "delta": 0.5}
    assert mmmu["subject"]["Clinical_Medicine"]["accuracy_base"] == 0.0
    assert mmmu["overall"]["all"]["accuracy_base"] == 0.3 and mmmu["overall"]["all"]["accuracy_variant"] == 1.0
    gmai = s["benchmarks"]["gmai_mmbench"]["analyses"]["grounding_by_group"]
    assert set(gmai) == {"overall", "clinical VQA task", "department", "perceptual granularity"}
    assert gmai["department"]["Pulmonary Medicine"] == {"n": 6, "accuracy_base": 0.0, "accuracy_variant": 1.0,
                                                        "delta": 1.0}
    rows = [json.loads(line) for line in open(tmp_path / "run" / "gmai_mmbench" / "base.jsonl")]
    assert rows[0]["groups"] == {"clinical VQA task": "Disease Diagnosis", "department": "Pulmonary Medicine",
                                 "perceptual granularity": "image level"}
    assert "| department | Pulmonary Medicine | 6 | 0.00 | 100.00 | 100.00 |" in \
        (tmp_path / "run" / "gmai_mmbench" / "grounding_by_group.md").read_text()


def test_a_benchmark_file_without_the_grouping_columns_says_which_and_reports_the_rest(tmp_path):
    """Missing grouping columns are named and the ungrouped numbers still reported; a row with an
    empty group cell counts under '(no value)', and the rows the reader skipped are counted."""
    import base64
    import realformat
    b64 = base64.b64encode(realformat.encoded(realformat.picture(3))).decode()
    # row 1 has no department; row 2's answer is no option, so the reader skips it
    (tmp_path / "GMAI_mm_bench_VAL.tsv").write_text(f"index\tquestion\tA\tB\tanswer\timage\tdepartment\n"
                                                    f"0\tWhich?\tx\ty\tA\t{b64}\tDermatology\n"
                                                    f"1\tWhich?\tx\ty\tB\t{b64}\t\n"
                                                    f"2\tWhich?\tx\ty\tC\t{b64}\tDermatology\n")
    logs = []
    s = ev.evaluate(ev.EvalConfig(model="m", out=str(tmp_path / "run")), {"gmai_mmbench": str(tmp_path)},
                    backend=EchoBackend(), log=logs.append)
    assert s["benchmarks"]["gmai_mmbench"]["missing_group_columns"] == ["clinical VQA task", "perceptual granularity"]
    assert any("no column 'clinical VQA task', 'perceptual granularity'" in m for m in logs)
    skipped = {"missing question/options or answer not among options": 1}
    assert s["benchmarks"]["gmai_mmbench"]["skipped_rows"] == skipped
    assert any("read 3, kept 2" in m and "skipped 1 (missing question/options" in m for m in logs)
    assert s["benchmarks"]["gmai_mmbench"]["base"]["accuracy"] == 0.5  # 'A' to both rows: right, then wrong
    assert s["benchmarks"]["gmai_mmbench"]["base"]["by_group"] == \
        {"department": {"Dermatology": {"n": 1, "accuracy": 1.0}, "(no value)": {"n": 1, "accuracy": 0.0}}}


def test_native_generation_stops_at_a_stop_string_and_says_when_the_budget_cut_it(tiny_model):
    backend = ev.NativeBackend(tiny_model, device="cpu")
    req = [{"messages": [{"role": "user", "content": "Which modality is shown?"}], "images": []}]
    free = backend.generate(req, max_new_tokens=6)[0][0]
    n_tokens = len(backend.tok(free, add_special_tokens=False)["input_ids"])
    assert free.finish == ("length" if n_tokens >= 6 else "stop") and len(free) > 3
    stop = free[2:4]  # a string the greedy answer contains: the text ends right after it
    cut = backend.generate(req, max_new_tokens=6, stop=[stop])[0][0]
    assert cut == free[:free.index(stop) + len(stop)] and cut.finish == "stop"


class ThinksAloud(EchoBackend):
    """Chain of thought for every second question, cut by the budget for the others."""
    def __init__(self):
        super().__init__()
        self.budgets = []

    def generate(self, requests, max_new_tokens=64, stop=None, **kw):
        self.budgets.append((max_new_tokens, stop))
        return [[ev.Completion("Considering the options, the answer is A. <answer>A</answer>") if i % 2 == 0 else
                 ev.Completion("Considering the options, the first one is", "length")] for i, _ in enumerate(requests)]


def test_cot_answers_get_their_own_budget_and_cut_ones_are_counted_apart(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    recs = [{**MC, "id": f"m{i}", "answer": "A", "images": [str(img)]} for i in range(4)]
    backend = ThinksAloud()
    cfg = ev.EvalConfig(model="m", variants=("cot",))
    rows = ev.run_variant(backend, recs, "cot", cfg, str(tmp_path / "cot.jsonl"))
    assert backend.budgets == [(1024, ["</answer>"])]  # curate.CotConfig's budget, not the 64 of short answers
    assert [("truncated" in r["flags"]) for r in rows] == [False, True, False, True]
    s = summary.summarize(rows)
    assert (s["n_truncated"], s["truncated_rate"], s["accuracy"], s["accuracy_complete"]) == (2, 0.5, 0.5, 1.0)
    assert s["invalid_rate"] == 0.5 and s["invalid_rate_complete"] == 0.0  # the cut ones are why answers are missing


def test_cli_cot_answers_get_the_curation_steps_budget_and_cut_ones_are_said(published, tmp_path, monkeypatch):
    """`run --cot` without a budget: curate.CotConfig's, stopping at </answer>; the run says how
    many answers the budget cut (and summary.json counts them)."""
    from click.testing import CliRunner
    from curate import CotConfig
    backend = ThinksAloud()
    patch_backends(monkeypatch, ckpt=backend)
    res = CliRunner().invoke(ev._cli(), ["run", "--model", "ckpt", "--cot", "--benchmark", "gmai_mmbench",
                                         "--data-root", str(published / "GMAI-MMBench"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert backend.budgets[-1] == (CotConfig().max_new_tokens, ["</answer>"])
    assert "gmai_mmbench/cot: 3 of 6 answers were cut by the token budget" in res.output
    assert json.load(open(tmp_path / "r" / "summary.json"))["benchmarks"]["gmai_mmbench"]["cot"]["n_truncated"] == 3


def test_cli_rephrase_model_builds_a_rephraser_from_its_backend(published, tmp_path, monkeypatch):
    """--rephrase-model DIR --rephrase-backend KIND builds the backend that rewords the
    multiple-choice questions; its checked rephrasings are asked and kept for reuse."""
    from click.testing import CliRunner
    rephraser = Scripted({f"radiograph {k} show": f"Which finding does chest radiograph {k} show?" for k in range(6)})
    built = patch_backends(monkeypatch, ckpt=Scripted(ANSWERS), reph=rephraser)
    out = tmp_path / "run"
    res = CliRunner().invoke(ev._cli(), ["run", "--model", "ckpt", "--rephrase", "--rephrase-model", "reph",
                                         "--rephrase-backend", "vllm", "--benchmark", "gmai_mmbench",
                                         "--data-root", str(published / "GMAI-MMBench"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert built == [("native", "ckpt"), ("vllm", "reph")] and len(rephraser.requests) == 6
    kept = [json.loads(line) for line in open(out / "gmai_mmbench" / "rephrasings.jsonl")]
    assert [(k["source"], k["question"]) for k in kept] == \
        [("model", f"Which finding does chest radiograph {k} show?") for k in range(6)]


def test_vllm_requests_carry_each_image_where_its_marker_stands():
    """No vLLM needed: what the vLLM backend hands LLM.chat, which renders it with the model's own
    template and image placeholder. Each '<image>' becomes an "image_pil" part holding the next image
    of the request, in order; a message without images keeps its string (a judge's request, the
    system prompt, an assistant answer scored for perplexity). A count that does not match is an
    error, not an image dropped or a marker left in the text."""
    from PIL import Image
    from vllm_backend import chat_messages
    ct, mri = Image.new("RGB", (28, 28)), Image.new("RGB", (28, 28))
    msgs = [{"role": "system", "content": "You are a radiologist."},
            {"role": "user", "content": "<image>First scan.<image>Second scan. Which is the MRI?\nA. CT\nB. MRI"},
            {"role": "assistant", "content": "B"}]
    got = chat_messages(msgs, [ct, mri])
    assert got[0] == msgs[0] and got[2] == msgs[2]
    assert got[1]["role"] == "user" and got[1]["content"] == [
        {"type": "image_pil", "image_pil": ct}, {"type": "text", "text": "First scan."},
        {"type": "image_pil", "image_pil": mri},
        {"type": "text", "text": "Second scan. Which is the MRI?\nA. CT\nB. MRI"}]
    assert got[1]["content"][0]["image_pil"] is ct and got[1]["content"][2]["image_pil"] is mri
    assert chat_messages([{"role": "user", "content": "Match the answer."}], []) == \
        [{"role": "user", "content": "Match the answer."}]
    # a newline right after the marker goes with it, as data.render_chat renders "<image>\nQuestion"
    assert chat_messages([{"role": "user", "content": "<image>\nWhich?"}], [ct])[0]["content"] == \
        [{"type": "image_pil", "image_pil": ct}, {"type": "text", "text": "Which?"}]
    # a request without images keeps its strings, even a judge's that quotes an answer writing "<image>"
    judge = [{"role": "user", "content": "Answer: <image> shows B."}]
    assert chat_messages(judge, []) == judge
    with pytest.raises(ValueError, match="marks 2 images, the request has 1 left"):
        chat_messages(msgs, [ct])
    with pytest.raises(ValueError, match="1 images that no '<image>' marks"):
        chat_messages(msgs, [ct, mri, ct])


def test_native_backend_hands_the_sampling_settings_to_the_model(tiny_model, monkeypatch):
    """temperature and top_p reach QwenVL.generate; each request samples from its own generator,
    seeded as vLLM seeds a request (the seed, plus j for its j-th of n texts), whatever batch it
    lands in; so a sampled answer does not change when a resumed run batches it differently."""
    backend = ev.NativeBackend(tiny_model, device="cpu", batch_size=2)
    seen, generate = [], backend.model.generate

    def recording(*args, **kw):
        seen.append({k: kw[k] for k in ("temperature", "top_p", "seed", "max_new_tokens")})
        return generate(*args, **kw)
    monkeypatch.setattr(backend.model, "generate", recording)
    req = [{"messages": [{"role": "user", "content": f"Say yes {i}."}], "images": []} for i in range(3)]
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=5)
    together = backend.generate(req, **kw)
    assert seen == [{"temperature": 1.0, "top_p": 0.9, "seed": [5, 5], "max_new_tokens": 6},
                    {"temperature": 1.0, "top_p": 0.9, "seed": [5], "max_new_tokens": 6}]
    assert backend.generate(req[2:], **kw) == together[2:] and backend.generate(req[1:2], **kw) == together[1:2]
    seen.clear()
    backend.generate(req[:1], n=2, **kw)
    assert seen[0]["seed"] == [5, 6]


def test_vllm_adapter_hands_sampling_settings_and_the_pixel_budget_to_vllm(monkeypatch):
    """No vLLM needed: a stand-in `vllm` module records what the adapter passes (REFERENCE 8):
    the engine gets the checkpoint, bf16 and the image processor's pixel budget; LLM.chat gets the
    requests with their images and, for generation, SamplingParams with temperature, top_p, the
    token budget, n, the seed and the stop strings (kept in the text); a completion cut by the budget
    comes back with finish 'length'. Prompt log-probs are asked of the whole conversation, no
    generation prompt, and come back per token."""
    import types
    from PIL import Image
    seen = {}

    class LLM:
        def __init__(self, **kw):
            seen["engine"] = kw

        def chat(self, conversations, params, use_tqdm=False, add_generation_prompt=True):
            seen["conversations"], seen["params"], seen["gen"] = conversations, params.kw, add_generation_prompt
            done = types.SimpleNamespace(text="<answer>B</answer>", finish_reason="stop")
            cut = types.SimpleNamespace(text="The image sho", finish_reason="length")
            return [types.SimpleNamespace(outputs=[done, cut], prompt_token_ids=[7, 8, 9],
                                          prompt_logprobs=[None, {8: types.SimpleNamespace(logprob=-0.5)},
                                                           {9: types.SimpleNamespace(logprob=-1.5)}])
                    for _ in conversations]

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw
    fake = types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, __version__="0.10.1.1")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    backend = ev.make_backend("vllm", "ckpt", batch_size=8, min_pixels=None, max_pixels=262144, device="cuda",
                              dtype=None)
    assert seen["engine"] == {"model": "ckpt", "dtype": "bfloat16", "max_model_len": 8192,
                              "limit_mm_per_prompt": {"image": 8}, "mm_processor_kwargs": {"max_pixels": 262144},
                              "tensor_parallel_size": 1, "seed": 0, "trust_remote_code": True}
    image = Image.new("RGB", (28, 28), (10, 20, 30))
    out = backend.generate([{"messages": [{"role": "user", "content": "<image>Which?"}], "images": [image]}],
                           max_new_tokens=12, temperature=0.7, top_p=0.9, seed=5, n=2, stop=["</answer>"])
    assert seen["params"] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 12, "n": 2, "seed": 5,
                              "stop": ["</answer>"], "include_stop_str_in_output": True}
    (conversation,) = seen["conversations"]
    assert seen["gen"] is True and conversation[0]["content"][1] == {"type": "text", "text": "Which?"}
    assert conversation[0]["content"][0]["image_pil"].getpixel((0, 0)) == (10, 20, 30)
    assert [(c, c.finish) for c in out[0]] == [("<answer>B</answer>", "stop"), ("The image sho", "length")]
    scored = [{"messages": [{"role": "user", "content": "<image>Caption?"}, {"role": "assistant", "content": "A CT."}],
               "images": [image]}]
    assert backend.prompt_logprobs(scored) == [{"token_ids": [7, 8, 9], "logprobs": [None, -0.5, -1.5]}]
    assert seen["gen"] is False and seen["params"] == {"max_tokens": 1, "prompt_logprobs": 0, "temperature": 0.0}
    assert seen["conversations"][0][1] == {"role": "assistant", "content": "A CT."}
    ev.make_backend("vllm", "judge", gpu_memory_utilization=0.45)  # a second engine in the process: its part
    assert seen["engine"]["model"] == "judge" and seen["engine"]["gpu_memory_utilization"] == 0.45

    class TextOnly(LLM):  # vLLM 0.9 refuses image settings for a text-only model (a judge)
        def __init__(self, **kw):
            if "limit_mm_per_prompt" in kw:
                raise ValueError("`limit_mm_per_prompt` is only supported for multimodal models.")
            super().__init__(**kw)
    fake.LLM = TextOnly
    ev.make_backend("vllm", "text-judge")
    assert seen["engine"] == {"model": "text-judge", "dtype": "bfloat16", "max_model_len": 8192,
                              "tensor_parallel_size": 1, "seed": 0, "trust_remote_code": True}
    fake.__version__ = "0.9.1"  # its LLM.chat takes no "image_pil" parts
    with pytest.raises(RuntimeError, match="vllm 0.9.1 is too old"):
        ev.make_backend("vllm", "ckpt")


def test_backends_of_one_command_share_engines_and_split_the_gpu(monkeypatch, tmp_path):
    """The evaluated model, its judge and its rephraser (or the curation teacher and verifier): one
    backend per distinct (backend, checkpoint directory), none for an empty checkpoint. A vLLM
    engine takes most of the GPU when it starts, so beside other models on the GPU (another engine,
    a native backend not on the CPU) each vLLM engine gets an equal part of 90% of the GPU per
    model on it (vLLM's advice for two instances on one GPU); a lone engine gets no part."""
    built = []

    def make(kind, path, **kw):
        built.append((kind, path, kw.get("gpu_memory_utilization")))
        return object()
    monkeypatch.setattr(ev, "make_backend", make)
    ckpt = str(tmp_path)
    model, judge, rephraser = ev.make_backends([("vllm", ckpt), ("vllm", ckpt + "/"), ("vllm", "")])
    assert judge is model and rephraser is None and built == [("vllm", ckpt, None)]
    built.clear()
    model, judge, rephraser = ev.make_backends([("vllm", "ckpt"), ("vllm", "judge"), ("native", "reph")])
    assert len({id(model), id(judge), id(rephraser)}) == 3
    assert built == [("vllm", "ckpt", 0.3), ("vllm", "judge", 0.3), ("native", "reph", 0.3)]
    built.clear()
    ev.make_backends([("native", "ckpt"), ("vllm", "judge")], device="cuda")
    assert built == [("native", "ckpt", 0.45), ("vllm", "judge", 0.45)]
    built.clear()
    ev.make_backends([("native", "ckpt"), ("vllm", "judge")], device="cpu")  # the GPU is the engine's
    assert built == [("native", "ckpt", None), ("vllm", "judge", None)]
    built.clear()
    ev.make_backends([("native", "ckpt"), ("native", "judge")])  # no vLLM engine: nothing to split
    assert [b[2] for b in built] == [None, None]
    built.clear()
    given = object()
    got = ev.make_backends([("native", "ckpt"), ("vllm", "a"), ("vllm", "b")], {("native", "ckpt"): given})
    assert got[0] is given and built == [("vllm", "a", 0.3), ("vllm", "b", 0.3)]


def test_evaluate_keeps_a_given_backend_and_defaults_the_judges_backend_to_the_models(tmp_path, monkeypatch):
    """A backend handed to evaluate() answers even when the config names no checkpoint, and no other
    is built; --judge-backend and --rephrase-backend default to --backend (a run on vLLM puts its
    judge on vLLM too)."""
    import realformat
    cfg = ev.EvalConfig(model="", backend="vllm", judge_model="j")
    assert (cfg.judge_backend, cfg.rephrase_backend) == ("vllm", "vllm")
    assert ev.EvalConfig(model="m", judge_backend="native").judge_backend == "native"
    realformat.write_mmmu(str(tmp_path))
    monkeypatch.setattr(ev, "make_backend", lambda kind, path, **kw: pytest.fail(f"built {kind} {path!r}"))
    model = Rambling()
    s = ev.evaluate(ev.EvalConfig(model="", out=str(tmp_path / "run")), {"mmmu": str(tmp_path / "MMMU")},
                    backend=model, log=lambda m: None)
    assert model.seen == 10 and s["benchmarks"]["mmmu"]["base"]["n_scored"] == 10


def test_native_backend_names_the_models_it_runs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    with pytest.raises(ValueError, match="'internvl_chat' model: the native backend runs Qwen2-VL and Qwen2.5-VL"
                                         ".*--backend vllm"):
        ev.NativeBackend(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="'internvl_chat' model"):  # a GPU share is vLLM's alone
        ev.make_backend("native", str(tmp_path), device="cpu", gpu_memory_utilization=0.45)


def two_pmc_questions(tmp_path):
    """A PMC-VQA root (published layout) with two questions on one figure."""
    import realformat
    pmc = tmp_path / "PMC-VQA"
    realformat.save(realformat.picture(1), str(pmc / "images" / "f.jpg"))
    (pmc / "test_clean.csv").write_text("Figure_path,Question,Answer,Choice A,Choice B,Answer_label\n"
                                        "f.jpg,What is the modality?,CT,A:CT,B:MRI,A\n"
                                        "f.jpg,Is there a mass?,MRI,A:CT,B:MRI,B\n")
    return pmc


def test_rephrase_test_on_multiple_choice_falls_back_to_templates_and_keeps_them(tmp_path):
    pmc = two_pmc_questions(tmp_path)
    cfg = ev.EvalConfig(model="m", out=str(tmp_path / "run"), variants=("base", "rephrase"))
    s = ev.evaluate(cfg, {"pmc_vqa": str(pmc)}, backend=EchoBackend(), log=lambda m: None)
    a = s["benchmarks"]["pmc_vqa"]["analyses"]["rephrase"]
    assert (a["n"], a["sources"], a["consistency"]) == (2, {"template": 2}, 1.0)
    kept = [json.loads(line) for line in open(tmp_path / "run" / "pmc_vqa" / "rephrasings.jsonl")]
    assert [d["question"] for d in kept] == ["Can you identify the modality?", "Does the image show a mass?"]
    asked = [json.loads(line)["prompt"] for line in open(tmp_path / "run" / "pmc_vqa" / "rephrase.jsonl")]
    assert asked[0].startswith("<image>Can you identify the modality?\nA. CT\nB. MRI")  # same options


def test_a_rephrasing_given_on_resume_replaces_the_rows_that_asked_the_old_one(tmp_path):
    """A finished rephrase run continued with --rephrase-file asks the file's questions again
    (the rows that asked the template's are stale), and keeps the rest."""
    pmc = two_pmc_questions(tmp_path)
    out, backend = str(tmp_path / "run"), EchoBackend()
    ev.evaluate(ev.EvalConfig(model="m", out=out, variants=("base", "rephrase")), {"pmc_vqa": str(pmc)},
                backend=backend, log=lambda m: None)
    assert backend.seen == 4
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"id": "pmc_vqa-0", "question": "Which imaging technique made this picture?"}) + "\n")
    logged = []
    ev.evaluate(ev.EvalConfig(model="m", out=out, variants=("base", "rephrase"), rephrase_file=str(mine)),
                {"pmc_vqa": str(pmc)}, backend=backend, log=logged.append)
    assert backend.seen == 5 and any("1 rows asked another question" in str(m) for m in logged)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "pmc_vqa" / "rephrase.jsonl")]
    assert [r["question"] for r in rows] == ["Does the image show a mass?",
                                             "Which imaging technique made this picture?"]


def test_a_run_says_how_many_questions_it_could_not_reorder(tmp_path):
    """A question whose options all read alike has no other order (shuffle) and, its gold letter
    moving under the same text, could never pass CircularEval: both leave it out, and say so."""
    pmc = two_pmc_questions(tmp_path)
    with open(pmc / "test_clean.csv", "a") as f:
        f.write("f.jpg,Which scan?,CT,A:CT,B:CT,A\n")  # both options read alike
    logged = []
    s = ev.evaluate(ev.EvalConfig(model="m", out=str(tmp_path / "run"), variants=("base", "shuffle", "circular")),
                    {"pmc_vqa": str(pmc)}, backend=EchoBackend(), log=logged.append)
    for v in ("shuffle", "circular"):
        assert f"pmc_vqa: 1 of 3 multiple-choice questions have options that all read alike and cannot be " \
               f"reordered; the {v} analysis leaves them out" in logged
        assert s["benchmarks"]["pmc_vqa"]["analyses"][v]["n"] == 2


def test_a_rerun_tries_again_the_items_that_got_no_answer(tmp_path):
    """An error (out of memory, a dead engine) costs the item its answer this time, not for good."""
    class Failing:
        def generate(self, requests, **kw):
            raise RuntimeError("CUDA out of memory")
    recs = {"pmc_vqa": str(two_pmc_questions(tmp_path))}
    out, logged = str(tmp_path / "run"), []
    s = ev.evaluate(ev.EvalConfig(model="m", out=out), recs, backend=Failing(), log=lambda m: None)
    assert (s["benchmarks"]["pmc_vqa"]["base"]["n_error"], s["benchmarks"]["pmc_vqa"]["base"]["n_scored"]) == (2, 0)
    backend = EchoBackend()
    s = ev.evaluate(ev.EvalConfig(model="m", out=out), recs, backend=backend, log=logged.append)
    assert backend.seen == 2 and s["benchmarks"]["pmc_vqa"]["base"]["n_scored"] == 2
    assert any("2 items got no answer before (error or missing image); trying them again" in str(m) for m in logged)


def test_summary_keeps_the_benchmarks_an_earlier_command_ran_on_the_same_out(tmp_path):
    recs = str(two_pmc_questions(tmp_path))
    out = str(tmp_path / "run")
    ev.evaluate(ev.EvalConfig(model="m", out=out), {"pmc_vqa": recs}, backend=EchoBackend(), log=lambda m: None)
    s = ev.evaluate(ev.EvalConfig(model="m", out=out), {"pmc_vqa_open": recs}, backend=EchoBackend(),
                    log=lambda m: None)
    assert sorted(s["benchmarks"]) == ["pmc_vqa", "pmc_vqa_open"]
    assert json.load(open(tmp_path / "run" / "summary.json"))["benchmarks"].keys() == s["benchmarks"].keys()
    assert (tmp_path / "run" / "table.md").read_text().splitlines()[0].count("PMC-VQA") == 2


def test_the_rephrase_sources_count_this_runs_questions_only(tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"id": f"pmc_vqa-{k}", "question": f"Reworded {k}?"}) + "\n" for k in range(4)))
    s = ev.evaluate(ev.EvalConfig(model="m", out=str(tmp_path / "run"), limit=1, variants=("base", "rephrase"),
                                  rephrase_file=str(mine)),
                    {"pmc_vqa": str(two_pmc_questions(tmp_path))}, backend=EchoBackend(), log=lambda m: None)
    assert s["benchmarks"]["pmc_vqa"]["analyses"]["rephrase"]["sources"] == {"file": 1}


def test_rows_asked_with_another_prompt_are_asked_again(tmp_path):
    """Rows written by code whose prompt has changed since would mix two prompts in one score."""
    recs = {"pmc_vqa": str(two_pmc_questions(tmp_path))}
    out = tmp_path / "run"
    ev.evaluate(ev.EvalConfig(model="m", out=str(out)), recs, backend=EchoBackend(), log=lambda m: None)
    rows = [json.loads(line) for line in open(out / "pmc_vqa" / "base.jsonl")]
    rows[0]["prompt"] = rows[0]["prompt"].replace("Answer with", "Reply with")  # an older wording
    (out / "pmc_vqa" / "base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    backend = EchoBackend()
    ev.evaluate(ev.EvalConfig(model="m", out=str(out)), recs, backend=backend, log=lambda m: None)
    assert backend.seen == 1
    assert all("Answer with" in json.loads(line)["prompt"] for line in open(out / "pmc_vqa" / "base.jsonl"))


def test_the_judge_is_built_only_for_judged_benchmarks_and_shares_the_models_engine(tmp_path, monkeypatch):
    """No judge engine for a run without MMMU or GMAI-MMBench; the evaluated model named as its
    own judge (or rephraser) is the same engine, not a second one on the GPU."""
    built = patch_backends(monkeypatch, m=EchoBackend(), j=EchoBackend())
    recs = {"pmc_vqa": str(two_pmc_questions(tmp_path))}
    ev.evaluate(ev.EvalConfig(model="m", out=str(tmp_path / "a"), judge_model="j"), recs, log=lambda m: None)
    assert built == [("native", "m")]
    import realformat
    realformat.write_mmmu(str(tmp_path))
    built.clear()
    s = ev.evaluate(ev.EvalConfig(model="m", out=str(tmp_path / "b"), judge_model="m", rephrase_model="m",
                                  variants=("base", "rephrase")), {"mmmu": str(tmp_path / "MMMU")}, log=lambda m: None)
    assert built == [("native", "m")] and s["benchmarks"]["mmmu"]["analyses"]["rephrase"]["n"] > 0


def test_a_run_json_older_than_a_setting_resumes_with_its_default(tmp_path):
    recs = {"pmc_vqa": str(two_pmc_questions(tmp_path))}
    out = tmp_path / "run"
    ev.evaluate(ev.EvalConfig(model="m", out=str(out)), recs, backend=EchoBackend(), log=lambda m: None)
    run = json.load(open(out / "run.json"))
    del run["cot_max_new_tokens"]  # written before that setting existed
    (out / "run.json").write_text(json.dumps(run))
    backend = EchoBackend()
    ev.evaluate(ev.EvalConfig(model="m", out=str(out)), recs, backend=backend, log=lambda m: None)
    assert backend.seen == 0


@pytest.mark.parametrize("change", [dict(temperature=0.7), dict(dtype="bfloat16"), dict(seed=1)])
def test_a_run_does_not_continue_with_settings_that_change_its_answers(tmp_path, change):
    recs = {"pmc_vqa": str(two_pmc_questions(tmp_path))}
    out = str(tmp_path / "run")
    ev.evaluate(ev.EvalConfig(model="m", out=out), recs, backend=EchoBackend(), log=lambda m: None)
    with pytest.raises(ValueError, match=f"other settings \\({next(iter(change))}\\)"):
        ev.evaluate(ev.EvalConfig(model="m", out=out, **change), recs, backend=EchoBackend(), log=lambda m: None)
    ev.evaluate(ev.EvalConfig(model="m", out=out, batch_size=3), recs, backend=EchoBackend(),
                log=lambda m: None)  # the batch size changes no answer


def test_a_run_refuses_a_file_holding_rows_of_items_it_does_not_ask(tmp_path):
    """A rerun with a smaller --limit would summarize its items while the file (and a comparison
    reading it) holds more; it is refused, while a larger --limit continues the file."""
    recs = {"pmc_vqa": str(two_pmc_questions(tmp_path))}
    out = str(tmp_path / "run")
    ev.evaluate(ev.EvalConfig(model="m", out=out, limit=1), recs, backend=EchoBackend(), log=lambda m: None)
    ev.evaluate(ev.EvalConfig(model="m", out=out), recs, backend=EchoBackend(), log=lambda m: None)
    with pytest.raises(ValueError, match=r"base.jsonl holds 1 rows of items this run does not ask \(e.g. pmc_vqa-1\)"):
        ev.evaluate(ev.EvalConfig(model="m", out=out, limit=1), recs, backend=EchoBackend(), log=lambda m: None)


def test_an_unscored_row_keeps_the_group_labels_of_its_record(tmp_path):
    """A missing image costs the row its answer, not its place in a table per group."""
    meta = {"subject": "Clinical_Medicine", "subfield": "Cardiology"}
    r = {**MC, "images": [str(tmp_path / "gone.png")], "meta": meta}
    (row,) = ev.run_variant(EchoBackend(), [r], "base", ev.EvalConfig(model="m"), str(tmp_path / "v.jsonl"),
                            log=lambda m: None)
    assert row["flags"] == ["missing_image"] and row["correct"] is None and row["question"] == MC["question"]
    assert row["groups"] == summary.group_labels(r["meta"]) and row["groups"]


# ----------------------------------------------------------------- broken items and damaged run files
def test_a_corrupt_benchmark_image_is_one_flagged_row_not_a_failed_run(tiny_model, tmp_path):
    import realformat
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    realformat.picture(1).save(good)
    realformat.picture(2).save(bad)
    with open(bad, "r+b") as f:
        f.truncate(200)  # "image file is truncated" once decoded
    recs = [{**MC, "id": f"m{i}", "images": [str(bad if i == 2 else good)]} for i in range(4)]
    backend = ev.NativeBackend(tiny_model, device="cpu", batch_size=4)
    rows = ev.run_variant(backend, recs, "base", ev.EvalConfig(model="m", max_new_tokens=2),
                          str(tmp_path / "v.jsonl"), log=lambda m: None)
    assert [("error" in r["flags"]) for r in rows] == [False, False, True, False]
    assert "bad.png" in rows[2]["error"] and rows[2]["correct"] is None
    s = summary.summarize(rows)
    assert (s["n"], s["n_scored"], s["n_error"], s["n_missing_image"]) == (4, 3, 1, 0)


def test_a_last_row_without_its_newline_is_repaired_before_appending(tmp_path):
    path = tmp_path / "base.jsonl"
    path.write_text(json.dumps({"id": "a", "correct": True, "flags": []}) + "\n" +
                    json.dumps({"id": "b", "correct": False, "flags": []}))  # killed before the newline
    assert set(ev.read_rows(str(path))) == {"a", "b"}
    with open(path, "a") as f:
        f.write(json.dumps({"id": "c", "correct": True, "flags": []}) + "\n")
    assert set(ev.read_rows(str(path))) == {"a", "b", "c"}  # no glued line, nothing lost


def test_a_run_whose_file_lost_rows_says_so(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    recs = [{**MC, "id": f"m{i}", "images": [str(img)]} for i in range(3)]

    class Forgets(EchoBackend):  # a backend that returns fewer outputs than it was asked for
        def generate(self, requests, **kw):
            return super().generate(requests, **kw)[:-1]
    with pytest.raises(RuntimeError, match=r"1 of 3 items have no row \(e.g. \['m2'\]\)"):
        ev.run_variant(Forgets(), recs, "base", ev.EvalConfig(model="m"), str(tmp_path / "v.jsonl"))


def test_duplicate_benchmark_ids_are_an_error_naming_both_records(tmp_path):
    header = "Figure_path,Question,Answer,Choice A,Choice B,Answer_label,index\n"
    (tmp_path / "test_clean.csv").write_text(header + "a.jpg,First?,x,A:x,B:y,A,7\nb.jpg,Second?,y,A:x,B:y,B,7\n")
    with pytest.raises(ValueError, match=r"records 0 and 1 share the id 'pmc_vqa-7' \(questions 'First\?' and "
                                         r"'Second\?'\)"):
        ev.load_benchmark("pmc_vqa", str(tmp_path))


@pytest.mark.parametrize("roots, error", [
    (["vqarad=/data/VQA_RAD"], "no benchmark named 'vqarad'"),  # a typo is not a folder for every benchmark
    (["vqa_rad="], r"give the folder after '=' \(vqa_rad=DIR\)"),
    (["/data/a", "/data/b"], "several unnamed --data-root values"),
    (["slake=/data/SLAKE"], "no --data-root for vqa_rad"),
])
def test_data_root_names_must_be_benchmarks_and_folders_must_be_given(roots, error):
    with pytest.raises(click.UsageError, match=error):
        ev.data_roots(roots, ["vqa_rad", "slake"])


def test_data_root_named_folders_win_and_a_plain_one_serves_the_rest():
    assert ev.data_roots(["/data/all", "slake=/data/SLAKE", "mmmu=/x=y"], ["vqa_rad", "slake", "mmmu"]) == \
        {"vqa_rad": "/data/all", "slake": "/data/SLAKE", "mmmu": "/x=y"}
    assert ev.data_roots(["/srv/a=b"], ["vqa_rad"]) == {"vqa_rad": "/srv/a=b"}  # a path with '=' stays a path
