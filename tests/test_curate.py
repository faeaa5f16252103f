"""Tests for curate.py: python -m pytest -q tests/test_curate.py"""
import json

import pytest

import curate
from curate import CaptionConfig, CotConfig, accept_rationale, check_caption, enhance_responses, parse_options
from prompts import COT_PROMPT, INSTRUCTIONS
from data import write_sharegpt
from tally import Tally
# The tiny random model and the image fixtures are shared with the decontamination tests.
from test_decontaminate import make_contamination_case, tiny, tiny_dir, write_case  # noqa: F401

OPTIONS = {"A": "Liver", "B": "Spleen", "C": "Kidney", "D": "Lung"}


# ------------------------------------------------------------------ CoT rejection sampling

@pytest.mark.parametrize("text, ok, reason", [
    ("The organ on the left is the spleen.\n<answer>B</answer>", True, "ok"),
    ("  Reasoning: shape and position match.  <answer>B</answer>  \n", True, "ok"),
    ("Step 1: spleen. <answer>A</answer>", False, "wrong_letter"),
    ("Step 1: it is E. <answer>E</answer>", False, "letter_not_in_options"),
    ("Step 1: spleen. <answer>b</answer>", False, "not_a_letter"),
    ("Step 1: spleen. <answer> B </answer>", False, "not_a_letter"),
    ("Step 1: spleen. <answer>B. Spleen</answer>", False, "not_a_letter"),
    ("<answer>B</answer>", False, "empty_reasoning"),
    ("...  <answer>B</answer>", False, "empty_reasoning"),
    ("Maybe <answer>A</answer> no, <answer>B</answer>", False, "several_answer_tags"),
    ("Spleen. <answer>B</answer> <answer>B</answer>", False, "several_answer_tags"),
    ("Spleen. <answer>B</answer>\nHope this helps!", False, "text_after_answer"),
    ("Spleen. <ANSWER>B</ANSWER>", False, "malformed_tag"),
    ("Spleen. </answer>B<answer>", False, "malformed_tag"),
    ("Spleen. <answer>B", False, "unbalanced_tag"),
    ("The answer is B.", False, "no_answer_tag"),
    ("", False, "empty"),
    (None, False, "empty"),
])
def test_accept_rationale_table(text, ok, reason):
    assert accept_rationale(text, OPTIONS, "B") == (ok, reason)


def test_accept_rationale_minimum_reasoning_length():
    assert accept_rationale("Spleen. <answer>B</answer>", OPTIONS, "B", min_reasoning_chars=20)[1] == "empty_reasoning"
    assert accept_rationale("Spleen. <answer>B</answer>", OPTIONS, "B", min_reasoning_chars=7)[0]


def test_parse_options_strips_images_and_trailing_instruction():
    text = "<image>Which organ is shown?\nA. Liver\nB. Spleen\nC: Kidney\n(D) Lung\nAnswer with the option's letter."
    stem, opts = parse_options(text)
    assert stem == "Which organ is shown?"
    assert opts == OPTIONS
    assert parse_options("<image>Is this normal?\nAnswer with yes or no.")[1] is None
    assert parse_options("Pick one\nA. x\nC. y")[1] is None  # letters must run A, B, ...


def mc_record(i, gold="B", source="pmc_vqa"):
    q = ("<image>Which organ is shown?\nA. Liver\nB. Spleen\nC. Kidney\nD. Lung\n"
         "Answer with the option's letter from the given choices directly.")
    return {"id": f"r{i}", "source": source, "images": [f"img{i}.png"],
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": gold}]}


class ScriptedTeacher:
    """Returns scripted samples per request (keyed by call order); raises for 'fail'."""

    def __init__(self, script):
        self.script, self.calls = list(script), []

    def generate(self, requests, max_new_tokens, temperature, top_p, seed, n=1):
        self.calls.append((len(requests), n, temperature))
        out = []
        for _ in requests:
            s = self.script.pop(0)
            if s == "fail":
                raise RuntimeError("teacher crashed")
            out.append(s)
        return out


def test_enhance_keeps_first_accepted_rationale_and_counts_the_rest(tmp_path):
    records = [mc_record(0), mc_record(1), mc_record(2, source="slake"),
               {"id": "cap", "source": "pmc_cap", "images": ["c.png"],
                "messages": [{"role": "user", "content": "<image>Describe."},
                             {"role": "assistant", "content": "A CT scan."}]}]
    good1, good2 = "Left upper quadrant: spleen. <answer>B</answer>", "It is the spleen. <answer>B</answer>"
    teacher = ScriptedTeacher([["<answer>A</answer>", good1, good2],        # r0: second sample accepted
                               ["Liver. <answer>A</answer>"] * 3,          # r1: none accepted
                               [good2, good1, "x"]])                       # r2: first accepted
    cfg, report = CotConfig(k=3, temperature=0.7, batch_size=8), Tally("cot")
    cache = curate.JsonlCache(str(tmp_path / "c.jsonl"))
    out = enhance_responses(records, teacher, cfg, report, cache)
    assert teacher.calls == [(3, 3, 0.7)]
    assert out[0]["messages"][-1]["content"] == good1
    assert out[0]["messages"][0]["content"] == "<image>" + COT_PROMPT.replace(
        "{QUESTION}", "Which organ is shown?\nA. Liver\nB. Spleen\nC. Kidney\nD. Lung")
    assert out[1] == records[1] and out[3] == records[3]
    assert out[2]["messages"][-1]["content"] == good2
    assert report.by_source["pmc_vqa"]["enhanced"] == 1
    assert report.by_source["pmc_vqa"]["kept:no_accepted_rationale"] == 1
    assert report.by_source["pmc_cap"]["kept:not_multiple_choice"] == 1
    assert report.counts["sample:wrong_letter"] == 4
    assert report.sections["acceptance_rate"] == {"pmc_vqa": 0.5, "slake": 1.0}
    # Resumable: a second run over the same cache calls the teacher for nothing.
    again = ScriptedTeacher([])
    out2 = enhance_responses(records, again, cfg, Tally("cot"), curate.JsonlCache(str(tmp_path / "c.jsonl")))
    assert again.calls == []
    assert out2 == out


def test_enhance_teacher_failure_is_counted_and_record_kept():
    records = [mc_record(0), mc_record(1)]
    teacher = ScriptedTeacher(["fail", "fail", ["Spleen. <answer>B</answer>"]])  # batch fails, then r0 fails alone
    report = Tally("cot")
    out = enhance_responses(records, teacher, CotConfig(k=1), report)
    assert out[0] == records[0]
    assert out[1]["messages"][-1]["content"] == "Spleen. <answer>B</answer>"
    assert report.counts["teacher_error"] == 1 and report.counts["kept:teacher_error"] == 1


def test_enhance_counts_unparseable_questions_and_gold_and_never_asks_the_teacher_about_them():
    no_gold = mc_record(0, gold="Bone marrow")
    open_question = {"id": "o", "source": "pmc_vqa", "images": ["o.png"], "messages": [
        {"role": "user", "content": "<image>Which organ is shown?"}, {"role": "assistant", "content": "Spleen"}]}
    report, teacher = Tally("cot"), ScriptedTeacher([])
    out = enhance_responses([no_gold, open_question], teacher, CotConfig(), report)
    assert teacher.calls == []
    assert out == [no_gold, open_question]
    assert report.counts == {"kept:gold_not_parsed": 1, "kept:not_multiple_choice": 1}


# ------------------------------------------------------------------ caption refinement

@pytest.mark.parametrize("text, reason", [
    ("An axial CT slice showing a round hypodense lesion in the right liver lobe.", "ok"),
    ("", "empty"), ("   ", "empty"), (None, "empty"),
    ("I'm sorry, but I cannot describe medical images.", "refusal"),
    ("A CT scan.", "too_short"),
    ("word " * 400, "too_long"),
    ("the left lung shows the left lung shows the left lung shows the left lung shows nodules", "repeated"),
])
def test_check_caption(text, reason):
    assert check_caption(text, CaptionConfig()) == (reason == "ok", reason)


def test_refine_captions_rewrites_captions_only_and_keeps_the_original_when_rejected():
    recs = [{"id": i, "source": "cap", "images": ["a.png"],
             "messages": [{"role": "user", "content": "<image>Describe this medical image."},
                          {"role": "assistant", "content": "Fig 1. H&E, x40, tumour cells."}]} for i in range(2)]
    qa = {"id": "qa", "source": "vqa_rad", "images": ["b.png"],
          "messages": [{"role": "user", "content": "<image>What does this image show?"},
                       {"role": "assistant", "content": "A chest radiograph with a large left pleural effusion."}]}
    good = "A microscope image of pink tissue with dense purple tumour cells."
    report = Tally("caption")
    teacher = ScriptedTeacher([[good], ["I cannot help with that."]])
    out = curate.refine_captions(recs + [qa], teacher, CaptionConfig(), report)
    assert out[0]["messages"][-1]["content"] == good and out[1] == recs[1] and out[2] == qa
    assert out[0]["original"] == {"question": "Describe this medical image.", "options": None}
    assert teacher.calls == [(2, 1, 0.0)]  # the question-answer record never reaches the teacher
    assert report.counts == {"captions": 2, "refined": 1, "kept:refusal": 1, "not_applicable": 1}


# ------------------------------------------------------------------ instruction augmentation

def test_augment_renders_sources_templates_and_strips_old_instructions():
    import sources
    yesno = {"id": "y", "source": "vqa_rad", "images": ["a.png"],
             "messages": [{"role": "user", "content": "<image>Is the liver enlarged?\nAnswer with yes or no."},
                          {"role": "assistant", "content": "yes"}]}
    long_open = {"id": "c", "images": ["a.png"], "messages": [
        {"role": "user", "content": "<image>What is shown?"},
        {"role": "assistant", "content": "An axial CT of the abdomen with a large cyst in the left kidney."}]}
    report = Tally("augment")
    out = curate.augment_records([yesno, mc_record(0), long_open], curate.AugmentConfig(seed=3), report)
    allowed = {"<image>" + t.format(question="Is the liver enlarged?") for t in INSTRUCTIONS["yesno"]}
    assert out[0]["messages"][0]["content"] in allowed  # the old instruction is not kept twice
    assert out[0]["messages"][1]["content"] == "Yes" and out[0]["id"] == "y" and out[0]["source"] == "vqa_rad"
    assert parse_options(out[1]["messages"][0]["content"])[1] == OPTIONS
    assert out[2] == long_open
    assert report.counts == {"augmented:yesno": 1, "augmented:choice": 1, "kept:long_answer": 1}


def test_augment_picks_the_same_templates_wherever_the_images_live():
    def records(folder, with_id):
        return [{**({"id": f"q{i}"} if with_id else {}), "images": [f"{folder}/img_{i}.png"],
                 "messages": [{"role": "user", "content": f"<image>Is lesion {i} visible?"},
                              {"role": "assistant", "content": "yes"}]} for i in range(40)]
    for with_id in (True, False):
        a, b = (curate.augment_records(records(folder, with_id), curate.AugmentConfig(seed=0), Tally("augment"))
                for folder in ("/data/run1", "/elsewhere/copy"))
        prompts = [r["messages"][0]["content"] for r in a]
        assert prompts == [r["messages"][0]["content"] for r in b]
        assert len(set(p.replace(str(i), "") for i, p in enumerate(prompts))) == 2  # both yes/no templates used


# ------------------------------------------------------------------ steps, files, pipeline

def test_pipeline_runs_steps_in_order_with_reports(tiny_dir, tmp_path):
    """augment -> decontaminate (hash) -> cot with the native backend on a saved random model:
    every step writes its output and its reports; nothing disappears without a count."""
    from click.testing import CliRunner
    ckpt = tiny_dir
    train, bench = make_contamination_case(tmp_path)
    train.append(mc_record(9))
    train[-1]["images"] = train[0]["images"]
    train.append({"id": "bad", "images": ["x.png"], "messages": [{"role": "user", "content": "<image><image>q"},
                                                                 {"role": "assistant", "content": "a"}]})
    in_path, bench_path = write_case(tmp_path, train, bench)
    spec = {"steps": [{"step": "augment", "in": in_path, "out": str(tmp_path / "a.jsonl")},
                      {"step": "decontaminate", "out": str(tmp_path / "b.jsonl"), "bench": [bench_path]},
                      {"step": "cot", "out": str(tmp_path / "c.jsonl"), "teacher": str(ckpt), "k": 2,
                       "max_new_tokens": 4}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = CliRunner().invoke(curate._cli(), ["pipeline", str(tmp_path / "spec.json")])
    assert res.exit_code == 0, res.output
    a = json.load(open(tmp_path / "a.report.json"))
    assert a["counts"]["dropped:invalid_record:image_count_mismatch"] == 1 and a["counts"]["output_records"] == 8
    assert "in.jsonl line 9" in a["examples"]["dropped:invalid_record:image_count_mismatch"]  # which file, which record
    b = json.load(open(tmp_path / "b.report.json"))
    assert b["counts"]["dropped:contaminated"] == 3 and b["counts"]["output_records"] == 5
    assert len(open(tmp_path / "b.dropped.jsonl").readlines()) == 3
    c = json.load(open(tmp_path / "c.report.json"))
    assert c["counts"]["multiple_choice"] == 1 and c["counts"]["output_records"] == 5
    assert sum(v for k, v in c["counts"].items() if k.startswith("sample:")) == 2  # k samples judged
    out = [json.loads(l) for l in open(tmp_path / "c.jsonl")]
    assert [r["id"] for r in out] == ["same_image_other_question", "unrelated1", "unrelated2", "unrelated3", "r9"]
    assert "## removed" in open(tmp_path / "b.report.md").read()


def test_pipeline_rejects_unknown_settings(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"steps": [{"step": "cot", "in": "x", "out": "y", "kk": 3}]}))
    with pytest.raises(Exception, match="unknown settings"):
        curate.run_pipeline(str(tmp_path / "spec.json"))


def test_every_setting_of_every_step_is_an_option_with_a_help_text():
    import dataclasses
    from click.testing import CliRunner
    for step in curate.STEPS:
        fields = dataclasses.fields(curate.config_class(step))
        assert all(f.metadata.get("help") for f in fields), step
        out = CliRunner().invoke(curate._cli(), [step, "--help"]).output
        assert all(f"--{f.name.replace('_', '-')} " in out for f in fields), out




# ------------------------------------------------------------------ the recipe's use of the steps

def test_augment_keeps_a_rationale_target_from_a_letter_only_instruction():
    """A GMAI-Reasoning10K record is trained to write its reasoning: "answer with the option's
    letter directly" would contradict its target, so its prompt stays as it is."""
    reasoning = {"id": "g", "source": "gmai_reasoning", "images": ["a.png"],
                 "messages": [{"role": "user", "content": "<image>\nWhich finding?\nA. Effusion\nB. Mass"},
                              {"role": "assistant", "content": "<think>Fluid level.</think><answer>A</answer>"}]}
    by_text = dict(mc_record(1), id="t")
    by_text["messages"] = [by_text["messages"][0], {"role": "assistant", "content": "Spleen"}]
    report = Tally("augment")
    out = curate.augment_records([reasoning, by_text, mc_record(0)], curate.AugmentConfig(), report)
    assert out[:2] == [reasoning, by_text]
    assert report.counts == {"kept:target_not_a_letter": 2, "augmented:choice": 1}
    assert out[2]["original"] == {"question": "Which organ is shown?", "options": OPTIONS}


def test_rationale_that_argues_for_another_option_is_inconsistent():
    assert curate.consistent_rationale("The organ is the spleen. <answer>B</answer>", OPTIONS, "B")
    assert curate.consistent_rationale("A is unlikely; C and D too. <answer>B</answer>", OPTIONS, "B")
    assert not curate.consistent_rationale("The answer is C, the kidney. <answer>B</answer>", OPTIONS, "B")
    assert not curate.consistent_rationale("This shape is typical of the liver. <answer>B</answer>", OPTIONS, "B")


def test_rationale_for_an_except_question_is_read_with_the_question():
    """'The liver is not in the left half' singles out the liver where the question asks for the
    organ that is not; read without the question, the one organ named positively (the spleen)
    would look like a commitment to another option."""
    text = "The spleen lies in the left half. The liver does not lie in the left half.\n<answer>A</answer>"
    question = "Which organ is NOT in the left half of the abdomen?"
    assert curate.consistent_rationale(text, OPTIONS, "A", question)
    assert not curate.consistent_rationale(text, OPTIONS, "A")
    record = mc_record(0, gold="A")  # the curation step reads the record's own question
    record["messages"][0]["content"] = record["messages"][0]["content"].replace("Which organ is shown?", question)
    report = Tally("cot")
    out = enhance_responses([record], ScriptedTeacher([[text]]), CotConfig(k=1), report)
    assert out[0]["messages"][-1]["content"] == text and report.counts["sample:ok"] == 1


class ScriptedVerifier:
    """Says yes unless the explanation contains 'hallucinated'; records (n, temperature) per call."""

    def __init__(self):
        self.prompts, self.calls = [], []

    def generate(self, requests, max_new_tokens, temperature, seed=None, top_p=1.0, n=1):
        self.calls.append((n, temperature))
        self.prompts += [r["messages"][0]["content"] for r in requests]
        return [["No." if "hallucinated" in r["messages"][0]["content"] else "Yes."] for r in requests]


def test_reasoning_set_samples_caps_and_writes_only_verified_records(tmp_path):
    """The paper's PMC-VQA reasoning set: draw items, k samples each, keep a rationale only if
    its format, letter, consistency and the verifier all agree, write only those, at most cap."""
    records = [mc_record(i) for i in range(8)] + [
        {"id": "yn", "source": "pmc_vqa", "images": ["y.png"],
         "messages": [{"role": "user", "content": "<image>Is it?"}, {"role": "assistant", "content": "yes"}]}]
    good = ["It is the spleen. <answer>B</answer>", "no tag"]
    script = {0: ["Kidney it is. <answer>C</answer>", "Spleen, by its shape. <answer>B</answer>"],  # wrong, good
              1: ["The answer is C. <answer>B</answer>", "no tag"],                                # inconsistent
              2: ["A hallucinated spleen. <answer>B</answer>", "Spleen, left. <answer>B</answer>"],  # verifier: no
              3: good, 4: good, 5: good, 6: good, 7: good}

    class ByImage(ScriptedTeacher):
        def generate(self, requests, max_new_tokens, temperature, top_p, seed, n=1):
            self.calls.append(int(requests[0]["images"][0][3:-4]))
            return [script[int(r["images"][0][3:-4])] for r in requests]
    # CotConfig.seed 0 draws 7 of the 8 multiple-choice records in this order: record 4 is not drawn
    assert __import__("random").Random(0).sample(range(8), 7) == [6, 7, 3, 0, 2, 5, 1]
    teacher, verifier, report = ByImage([]), ScriptedVerifier(), Tally("cot")
    cfg = CotConfig(k=2, batch_size=1, sample=7, cap=5, accepted_only=True, verifier="v")
    out = enhance_responses(records, teacher, cfg, report, verifier=verifier)
    assert teacher.calls == [6, 7, 3, 0, 2, 5, 1]  # the undrawn record 4 and the yes/no record: never asked
    assert [r["id"] for r in out] == ["r0", "r2", "r3", "r6", "r7"]  # 5 = cap; record 5 came too late
    assert out[1]["messages"][-1]["content"] == "Spleen, left. <answer>B</answer>"
    assert out[0]["messages"][-1]["content"] == "Spleen, by its shape. <answer>B</answer>"
    assert all(r["messages"][0]["content"].startswith("<image>" + COT_PROMPT[:40]) for r in out)
    assert all(r["original"] == {"question": "Which organ is shown?", "options": OPTIONS} for r in out)
    assert {k: v for k, v in report.counts.items() if not k.startswith("sample:")} == {
        "multiple_choice": 7, "enhanced": 5, "dropped:not_multiple_choice": 1, "dropped:not_drawn": 1,
        "dropped:cap_reached": 1, "dropped:no_accepted_rationale": 1}
    assert report.counts["sample:commits_to_another_option"] == 1
    assert report.counts["sample:verifier_said_no"] == 1 and report.counts["sample:wrong_letter"] == 1
    assert report.sections["acceptance_by_criterion"] == {
        "format": "9 of 14 samples", "letter": "8 of 9 samples", "consistency": "7 of 8 samples",
        "verifier": "6 of 7 samples"}
    assert sum("hallucinated" in p for p in verifier.prompts) == 1 and "<answer>" not in " ".join(verifier.prompts)
    # with cap 4 the first chunk (batch_size x 4 = 4 records) fills it: the teacher sees no more
    capped = ByImage([])
    enhance_responses(records, capped, CotConfig(k=2, batch_size=1, sample=7, cap=4, accepted_only=True),
                      Tally("cot"))
    assert capped.calls == [6, 7, 3, 0]


def test_reasoning_step_on_the_command_line_reports_each_criterion(tmp_path):
    from click.testing import CliRunner
    write_sharegpt([mc_record(i) for i in range(3)], str(tmp_path / "in.jsonl"))
    teacher = ScriptedTeacher([["It is the spleen. <answer>B</answer>", "The answer is C. <answer>B</answer>"],
                               ["Liver. <answer>A</answer>", "no tag"],
                               ["Spleen. <answer>B</answer>", "Spleen. <answer>B</answer>"]])
    import evaluate
    orig = evaluate.make_backend
    evaluate.make_backend = lambda kind, path, **kw: teacher
    try:
        res = CliRunner().invoke(curate._cli(), ["cot", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"),
                                              "--teacher", "T", "--k", "2", "--accepted-only"])
    finally:
        evaluate.make_backend = orig
    assert res.exit_code == 0, res.output
    assert len(open(tmp_path / "out.jsonl").readlines()) == 2
    rep = json.load(open(tmp_path / "out.report.json"))
    assert rep["acceptance_by_criterion"] == {"format": "5 of 6 samples", "letter": "4 of 5 samples",
                                              "consistency": "3 of 4 samples"}
    assert rep["by_source"]["pmc_vqa"]["in"] == 3 and rep["by_source"]["pmc_vqa"]["out"] == 2


@pytest.mark.parametrize("flags, temperature", [(["--temperature", "0.75"], 0.75), ([], 0.8)])
def test_cot_command_samples_at_its_temperature_and_the_verifier_answers_greedily(tmp_path, monkeypatch, flags,
                                                                                   temperature):
    """The teacher draws k samples per question at the command's temperature (the README's 0.8 by
    default; REFERENCE section 7: 0.7-1.0); the verifier's yes or no is read greedily (0.0)."""
    from click.testing import CliRunner
    import evaluate
    write_sharegpt([mc_record(i) for i in range(2)], str(tmp_path / "in.jsonl"))
    teacher, verifier = ScriptedTeacher([["Spleen. <answer>B</answer>"] * 4] * 2), ScriptedVerifier()
    monkeypatch.setattr(evaluate, "make_backend", lambda kind, path, **kw: {"T": teacher, "V": verifier}[path])
    res = CliRunner().invoke(curate._cli(), ["cot", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"),
                                          "--teacher", "T", "--verifier", "V", "--k", "4"] + flags)
    assert res.exit_code == 0, res.output
    assert teacher.calls == [(2, 4, temperature)]  # 2 questions, 4 samples each
    assert verifier.calls and set(verifier.calls) == {(1, 0.0)}


@pytest.mark.parametrize("backend", ["native", "vllm"])
def test_a_teacher_that_also_verifies_is_loaded_once(tmp_path, monkeypatch, backend):
    """--verifier naming the teacher's checkpoint shares the teacher's engine (a second vLLM engine
    of the same model would not fit beside the first): --verifier-backend defaults to --backend."""
    from click.testing import CliRunner
    import evaluate
    write_sharegpt([mc_record(0)], str(tmp_path / "in.jsonl"))
    built = []

    def make(kind, path, **kw):
        built.append((kind, path))
        return ScriptedTeacher([["B. <answer>B</answer>"]])
    monkeypatch.setattr(evaluate, "make_backend", make)
    res = CliRunner().invoke(curate._cli(), ["cot", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"),
                                          "--teacher", "T", "--verifier", "T", "--k", "1", "--backend", backend])
    assert res.exit_code == 0, res.output
    assert built == [(backend, "T")]


@pytest.mark.parametrize("change", [{"k": 2}, {"temperature": 1.0}, {"teacher": "another-teacher"}])
def test_cot_cache_is_discarded_when_k_temperature_or_teacher_change(tmp_path, change):
    """Cached samples answer only the settings that drew them: the same settings ask the teacher
    nothing, another k, temperature or teacher asks it again with the new settings."""
    import dataclasses
    cache_path, good = str(tmp_path / "cot.cache.jsonl"), "It is the spleen. <answer>B</answer>"
    cfg = CotConfig(teacher="teacher-a", k=1, temperature=0.8)
    enhance_responses([mc_record(0)], ScriptedTeacher([[good]]), cfg, Tally("cot"), curate.JsonlCache(cache_path))
    same = ScriptedTeacher([])
    enhance_responses([mc_record(0)], same, cfg, Tally("cot"), curate.JsonlCache(cache_path))
    assert same.calls == []
    changed = dataclasses.replace(cfg, **change)
    fresh = ScriptedTeacher([[good] * changed.k])
    out = enhance_responses([mc_record(0)], fresh, changed, Tally("cot"), curate.JsonlCache(cache_path))
    assert fresh.calls == [(1, changed.k, changed.temperature)]
    assert out[0]["messages"][-1]["content"] == good


def test_merge_adds_a_generated_set_under_its_label(tmp_path):
    from data import read_sharegpt
    write_sharegpt([mc_record(i, source="pmc_vqa") for i in range(3)], str(tmp_path / "mix.jsonl"))
    write_sharegpt([mc_record(9, source="pmc_vqa")], str(tmp_path / "reasoning.jsonl"))
    cfg = curate.MergeConfig(add=[f"pmc_vqa_reasoning={tmp_path / 'reasoning.jsonl'}"], seed=1)
    report = curate.run_step("merge", str(tmp_path / "mix.jsonl"), str(tmp_path / "all.jsonl"), cfg)
    out, _ = read_sharegpt(str(tmp_path / "all.jsonl"))
    assert sorted((r["id"], r["source"]) for r in out) == [("r0", "pmc_vqa"), ("r1", "pmc_vqa"), ("r2", "pmc_vqa"),
                                                          ("r9", "pmc_vqa_reasoning")]
    assert report.by_source["pmc_vqa_reasoning"] == {"in": 1, "out": 1}
    with pytest.raises(Exception, match="LABEL=PATH"):
        curate.run_step("merge", str(tmp_path / "mix.jsonl"), str(tmp_path / "x.jsonl"), curate.MergeConfig(add=["x"]))


def test_a_step_killed_midway_leaves_no_half_output_and_the_next_step_refuses_it(tmp_path, monkeypatch):
    recs = [mc_record(i) for i in range(5)]
    write_sharegpt(recs, str(tmp_path / "in.jsonl"))
    out = str(tmp_path / "aug.jsonl")
    curate.run_step("augment", str(tmp_path / "in.jsonl"), out, curate.AugmentConfig())
    before = open(out).read()
    calls = {"n": 0}
    real = json.dumps

    def dies_on_the_third_record(obj, *a, **k):  # a kill while OUT is being written
        if isinstance(obj, dict) and "messages" in obj:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return real(obj, *a, **k)
    monkeypatch.setattr(json, "dumps", dies_on_the_third_record)
    with pytest.raises(KeyboardInterrupt):
        curate.run_step("augment", str(tmp_path / "in.jsonl"), out, curate.AugmentConfig(seed=5))
    monkeypatch.setattr(json, "dumps", real)
    assert open(out).read() == before  # the complete earlier output, not 2 of 5 lines
    with pytest.raises(Exception, match="says the step that writes it did not finish"):
        curate.run_step("augment", out, str(tmp_path / "next.jsonl"), curate.AugmentConfig())
    curate.run_step("augment", str(tmp_path / "in.jsonl"), out, curate.AugmentConfig(seed=5))  # rerun: complete
    assert curate.run_step("augment", out, str(tmp_path / "next.jsonl"), curate.AugmentConfig()).counts[
        "output_records"] == 5
