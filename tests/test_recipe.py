"""The README's "Running the real recipe", rehearsed: its commands, as written and in its order,
on miniatures of all eight training sources and six benchmarks in their published layouts
(realformat.py), with a tiny random model standing in for every checkpoint.

    python -m pytest -q tests/test_recipe.py

What is substituted, and nothing else: TEACHER_DIR and VERIFIER_DIR are scripted stand-ins
(good, wrong, inconsistent and unfaithful rationales; good captions and a refusal), the gme
embedder is the model-free hash embedder (a random model's embeddings are all alike), the tiny
checkpoint sits in a folder named Qwen2.5-VL-3B-Instruct, and training runs one process for one
step. Each step's intent is asserted on its outputs.
"""
import json
import os
import re
import shlex

import pytest
import torch
from click.testing import CliRunner

import conftest
import curate
import evaluate
import mix
import prompts
import sources
import train
from data import read_sharegpt
from realformat import write_all
from test_decontaminate import tiny_qwen

README = os.path.join(conftest.ROOT, "README.md")


def recipe_commands():
    """The shell commands of the README's recipe section (continuation lines joined)."""
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Running the real recipe"):text.index("### Hardware")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        commands += [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    return commands


def tiny_checkpoint(path):
    """The decontamination tests' tiny random model, saved as a Hub-style directory."""
    model, tok = tiny_qwen(["What imaging modality was used for this figure? Axial contrast-enhanced CT of the "
                            "abdomen showing a hypodense lesion in the right lobe of the liver."] * 5, str(path))
    model.save_pretrained(str(path))


class ScriptedTeacher:
    """The teacher and the verifier in one. CoT prompts get k=4 samples: a wrong letter, a letter
    the reasoning contradicts, an unfaithful rationale (the verifier rejects it) and a good one;
    every third question only bad ones. Caption prompts get a rewrite, the first one a refusal."""

    def __init__(self, gold):
        self.gold, self.asked = gold, {"cot": 0, "caption": 0, "verify": 0}

    def generate(self, requests, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=None, n=1):
        return [self.answer(r["messages"][0]["content"], n) for r in requests]

    def answer(self, prompt, n):
        if prompt.rstrip().endswith("Answer with yes or no."):
            self.asked["verify"] += 1
            return ["No." if "hallucinat" in prompt else "Yes."]
        if "rewrite this as a simplified" in prompt:
            self.asked["caption"] += 1
            original = prompt.split("Original description:\n\n")[1].split("\n\nNow rewrite")[0]
            return ["I'm sorry, I cannot describe this image." if self.asked["caption"] == 1 else
                    "A simple CT picture of the belly: " + original.lower()]
        self.asked["cot"] += 1
        question = prompt.split("Question:\n\n")[1]
        stem = question.split("\nA. ")[0]
        gold = self.gold[stem]
        wrong = "A" if gold != "A" else "B"
        if self.asked["cot"] % 3 == 0:
            return [f"It is {wrong}. <answer>{wrong}</answer>"] * n
        return [f"The scan looks like option {wrong}. <answer>{wrong}</answer>",
                f"The answer is {wrong}. <answer>{gold}</answer>",
                f"A hallucinated arrow points at the finding. <answer>{gold}</answer>",
                f"The contrast and the cross-section fit option {gold}. <answer>{gold}</answer>"][:n]


def run_command(command, gold):
    """One README command, in-process. Returns the CliRunner result."""
    command = command.replace("--embedder gme-Qwen2-VL-2B-Instruct", "--embedder hash")
    args = shlex.split(command)
    if args[0] == "torchrun":  # one process, one optimizer step on the curated file
        args = args[args.index("train.py"):] + ["--stop-after", "1", "--global-batch", "2", "--workers", "0",
                                                "--max-len", "1024"]
    else:
        assert args[0] == "python", command
        args = args[1:]
    cli = {"mix.py": mix.cli, "curate.py": curate._cli(), "train.py": train.main}[args[0]]
    teacher = ScriptedTeacher(gold)
    real = evaluate.make_backend
    evaluate.make_backend = lambda kind, path, **kw: teacher if path in ("TEACHER_DIR", "VERIFIER_DIR") else \
        real(kind, path, **kw)
    try:
        return CliRunner().invoke(cli, args[1:], catch_exceptions=False)
    finally:
        evaluate.make_backend = real


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """Runs every recipe command but evaluation in a fresh folder; returns that folder and the
    planted benchmark items. About 6 s: the tests that use it are marked slow."""
    root = tmp_path_factory.mktemp("recipe")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        planted = write_all("data")
        tiny_checkpoint(root / "Qwen2.5-VL-3B-Instruct")
        gold = {r["question"]: r["answer"] for r in sources.load_source("pmc_vqa", "data/PMC-VQA", "train")}
        outputs = []
        for command in recipe_commands():
            if command.startswith("python evaluate.py"):
                continue  # evaluation has its own tests (test_evaluate.py); its benchmarks load below
            result = run_command(command, gold)
            assert result.exit_code == 0, f"{command}\n{result.output}"
            outputs.append(result.output)
    finally:
        os.chdir(cwd)
    return root, planted


def records(root, name):
    return read_sharegpt(str(root / "sft" / name))[0]


def report(root, name):
    with open(root / "sft" / name) as f:
        return json.load(f)


def test_the_recipe_runs_in_the_readme_order():
    names = [" ".join(shlex.split(c)[:3]) for c in recipe_commands()]
    assert names == ["python mix.py build", "python mix.py convert", "python curate.py cot",
                     "python curate.py merge", "python curate.py caption", "python curate.py augment",
                     "python curate.py perplexity", "python curate.py decontaminate", "torchrun --nproc_per_node 2",
                     "python evaluate.py run", "python evaluate.py compare"]


@pytest.mark.slow
def test_mix_reads_every_source_including_the_pmc_vqa_captions(rehearsal):
    root, _ = rehearsal
    mix = report(root, "mix.report.json")["sources"]
    # usable rows of each miniature: PMC-VQA v1 questions (12 + 2 planted), v2 captions (one per
    # captioned figure: 6 figures, one without a caption), both SLAKE languages (12 + 1 planted) ...
    assert {k: v["used"] for k, v in mix.items()} == {
        "llava_onevision": 7, "pmc_vqa_caption": 5, "pmc_vqa": 14, "path_vqa": 9, "slake": 13, "vqa_rad": 9,
        "gmai_reasoning": 5}
    assert mix["pmc_vqa_caption"]["skipped"] == {"duplicate figure": 5, "missing Caption": 2}
    captions = [r for r in records(root, "mix.jsonl") if r["source"] == "pmc_vqa_caption"]
    assert all(r["task"] == "caption" and os.path.exists(r["images"][0]) for r in captions)
    assert all("/images_2/figures/" in r["images"][0] for r in captions)


@pytest.mark.slow
def test_reasoning_set_holds_only_verified_rationales_within_the_cap(rehearsal):
    root, _ = rehearsal
    reasoning = records(root, "pmc_vqa_reasoning.jsonl")
    rep = report(root, "pmc_vqa_reasoning.report.json")
    # 14 questions (--sample 5000: all), 4 samples each = 56. Every third question (4 of them)
    # gets 4 wrong letters; the other 10 one wrong letter each: 56 - 16 - 10 = 30 right letters, of
    # which 10 contradict themselves and 10 are unfaithful: 10 accepted, one per question.
    assert rep["counts"]["multiple_choice"] == 14 and len(reasoning) == rep["counts"]["enhanced"] == 10 <= 3000
    assert rep["acceptance_by_criterion"] == {"format": "56 of 56 samples", "letter": "30 of 56 samples",
                                              "consistency": "20 of 30 samples", "verifier": "10 of 20 samples"}
    for r in reasoning:
        options, gold = r["original"]["options"], None
        text = r["messages"][-1]["content"]
        gold = re.search(r"<answer>(\w)</answer>", text).group(1)
        assert curate.accept_rationale(text, options, gold) == (True, "ok")
        assert curate.consistent_rationale(text, options, gold) and "hallucinat" not in text
        assert r["messages"][0]["content"].startswith("<image>" + prompts.COT_PROMPT[:60])


@pytest.mark.slow
def test_short_answer_pmc_vqa_records_are_untouched_and_augmented_to_fit_their_target(rehearsal):
    root, _ = rehearsal
    final = records(root, "train.jsonl")
    pmc = [r for r in final if r["source"] == "pmc_vqa"]
    assert pmc and all(re.fullmatch(r"[A-D]", r["messages"][-1]["content"]) for r in pmc)
    assert all("<answer>" in r["messages"][-1]["content"] for r in final if r["source"] == "pmc_vqa_reasoning")
    for r in final:  # a letter-only instruction only where the target is a letter
        prompt = r["messages"][0]["content"]
        if "option's letter" in prompt or "letter of the correct option" in prompt:
            assert re.fullmatch(r"[A-J]", r["messages"][-1]["content"]), r
    augment = report(root, "augmented.report.json")["counts"]
    assert augment["kept:target_not_a_letter"] == 5 + 10  # GMAI-Reasoning10K and the reasoning set


@pytest.mark.slow
def test_caption_steps_touch_captions_only(rehearsal):
    root, _ = rehearsal
    caption = report(root, "captioned.report.json")
    assert caption["counts"]["refined"] == 4 and caption["counts"]["kept:refusal"] == 1
    assert caption["counts"]["not_applicable"] == caption["counts"]["output_records"] - 5
    ppl = report(root, "filtered.report.json")
    for source, c in ppl["by_source"].items():  # every record that is not a caption survives
        if source != "pmc_vqa_caption":
            assert c["in"] == c["out"] == c["not_applicable"], source
    assert ppl["by_source"]["pmc_vqa_caption"]["in"] == 5 and ppl["by_source"]["pmc_vqa_caption"]["out"] == 4
    assert list(ppl["cutoffs"]) == ["pmc_vqa_caption"]


# Where realformat.py plants each benchmark's item, by hand: the training sources whose records
# must be removed. The MMMU item planted in PMC-VQA train also reaches the reasoning set (its
# chain-of-thought prompt no longer reads like the benchmark question): both copies go.
PLANTED_IN = {"vqa_rad": ["vqa_rad"], "pmc_vqa": ["pmc_vqa"], "mmmu": ["pmc_vqa", "pmc_vqa_reasoning"],
              "gmai_mmbench": ["llava_onevision"], "slake": ["path_vqa"], "path_vqa": ["slake"]}


@pytest.mark.slow
def test_decontamination_after_the_whole_chain_removes_the_planted_items_and_nothing_else(rehearsal):
    root, planted = rehearsal
    dec = report(root, "train.report.json")
    expected = sorted((source, item["question"]) for item in planted for source in PLANTED_IN[item["benchmark"]])
    assert sorted((r["source"], r["bench_question"]) for r in dec["removed"]) == expected
    final_questions = {prompts.normalize_question(r.get("original", {}).get("question", "")) for r in
                       records(root, "train.jsonl")}
    assert not {prompts.normalize_question(p["question"]) for p in planted} & final_questions
    assert dec["counts"]["output_records"] == dec["counts"]["in"] - len(expected)


@pytest.mark.slow
def test_training_starts_on_the_curated_file(rehearsal):
    root, _ = rehearsal
    log = [json.loads(line) for line in open(root / "runs" / "infimed-3b" / "log.jsonl")]
    assert [r["step"] for r in log if "loss" in r] == [1] and all(torch.isfinite(torch.tensor(r["loss"])) for r in log
                                                                   if "loss" in r)
    assert os.path.exists(root / "runs" / "infimed-3b" / "step-000001" / "model.safetensors")


@pytest.mark.parametrize("benchmark,root,count", [
    ("vqa_rad", "VQA_RAD", 4), ("slake", "SLAKE", 4), ("path_vqa", "PathVQA", 5), ("pmc_vqa", "PMC-VQA", 3),
    ("mmmu", "MMMU", 10), ("gmai_mmbench", "GMAI-MMBench", 6)])
@pytest.mark.slow
def test_the_evaluation_reads_each_benchmark_as_published(rehearsal, benchmark, root, count):
    data_root, _ = rehearsal
    recs = evaluate.load_benchmark(benchmark, str(data_root / "data" / root))
    assert len(recs) == count and all(r["images"] for r in recs)


def readme_command(prefix):
    """The README recipe command that starts with prefix, as arguments."""
    return shlex.split(next(c for c in recipe_commands() if c.startswith(prefix)))


def test_readme_reasoning_set_is_table2s_3k_sampled_at_curation_settings():
    """Table 2's last row, "PMC-VQA Reasoning ~3K", is the README's cot command: at most 3,000
    verified rationales drawn from 5,000 questions, k samples at a temperature within common
    practice (REFERENCE section 7: k = 4-8 at 0.7-1.0)."""
    args = readme_command("python curate.py cot")
    opt = {a: args[i + 1] for i, a in enumerate(args) if a in ("--cap", "--sample", "--k", "--temperature")}
    assert opt == {"--k": "4", "--temperature": "0.8", "--sample": "5000", "--cap": "3000"}
    assert "--accepted-only" in args  # the reasoning set is a separate file of enhanced records only


EVAL_ROOTS = {"vqa_rad": "data/VQA_RAD", "slake": "data/SLAKE", "path_vqa": "data/PathVQA", "pmc_vqa": "data/PMC-VQA",
              "mmmu": "data/MMMU", "gmai_mmbench": "data/GMAI-MMBench"}


def test_evaluation_command_reads_each_benchmark_from_its_named_data_root(tmp_path, monkeypatch):
    """--data-root NAME=DIR, once per benchmark as the README writes it: each benchmark gets its
    own folder (the folders test_the_evaluation_reads_each_benchmark_as_published reads). The
    evaluation itself is replaced by a recorder of the roots it is given."""
    seen = {}

    def recorder(cfg, benchmarks, log=print):
        seen.update(benchmarks)
        os.makedirs(cfg.out, exist_ok=True)
        open(os.path.join(cfg.out, "table.md"), "w").close()
        return {"benchmarks": benchmarks}
    monkeypatch.setattr(evaluate, "evaluate", recorder)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(evaluate._cli(), readme_command("python evaluate.py run")[2:])
    assert result.exit_code == 0, result.output
    assert seen == EVAL_ROOTS
