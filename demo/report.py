"""Stage 6 of the demo (demo/run.py): report.md and its plots, from what the earlier stages
wrote: `evaluate.py compare` over the evaluation runs, accuracy per skill and per question form
as each run's summary.json counts it beside chance, the lesion attributes named in captions,
the curation counts, the vision probe, the training loss and the time per stage.

    python -m demo.run          # runs every stage; this one last
"""
import json
import os
import subprocess
import sys

from demo import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # evaluate.py runs from here


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def chance(record):
    """Accuracy of a uniform guess among the valid answers of one question."""
    if record.get("options"):
        return 1 / len(record["options"])
    if record["answer"].strip().lower() in ("yes", "no"):
        return 0.5
    return 1 / len(synthetic.CHOICES[record["meta"]["skill"]])


def mean_chance(records):
    return sum(chance(r) for r in records) / len(records)


def synthetic_summary(eval_dir):
    """The synthetic benchmark's metrics in one `evaluate.py run` directory's summary.json."""
    with open(os.path.join(eval_dir, "summary.json")) as f:
        return json.load(f)["benchmarks"]["synthetic"]


def plots(paths, log, skills, skill_chance, runs):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in log]
    ax.plot(steps, [r["loss"] for r in log], lw=1, alpha=0.4, label="per step")
    k = max(1, len(log) // 25)
    smooth = [sum(r["loss"] for r in log[max(0, i - k + 1):i + 1]) / len(log[max(0, i - k + 1):i + 1])
              for i in range(len(log))]
    ax.plot(steps, smooth, lw=2, label=f"mean of {k} steps")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy per supervised token", yscale="log",
           title="Training loss (torchrun, 2 processes)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(paths["out"], "loss.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = ["overall"] + skills
    width = 0.8 / len(runs)
    for j, (label, acc) in enumerate(runs):
        ax.bar([i + (j - (len(runs) - 1) / 2) * width for i in range(len(names))], [acc.get(n, 0) for n in names],
               width, label=label)
    for i, n in enumerate(names):
        ax.plot([i - 0.4, i + 0.4], [skill_chance[n]] * 2, "k--", lw=1, label="chance" if i == 0 else None)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set(ylabel="accuracy", ylim=(0, 1), title="Synthetic benchmark accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(paths["out"], "accuracy.png"), dpi=120)
    plt.close(fig)


def md_table(header, rows):
    """Markdown table lines: the header, the separator, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def stage_report(cfg, paths, evals, captions, timings):
    """report.md: `evaluate.py compare` over the evaluation runs; accuracy per skill and per question
    form as each run's summary.json counts it, beside chance (from the benchmark records); then what
    only the demo has: lesion attributes named in captions, curation, vision probe, training, timings."""
    test = read_jsonl(os.path.join(paths["synth"], "test.jsonl"))
    log = read_jsonl(os.path.join(paths["run"], "log.jsonl"))
    with open(os.path.join(paths["curate"], "summary.json")) as f:
        cur = json.load(f)
    with open(paths["vision_probe"]) as f:
        probe = json.load(f)
    table = subprocess.run([sys.executable, "evaluate.py", "compare"] + list(evals.values()), cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    scores = {name: synthetic_summary(d)["base"] for name, d in evals.items()}  # the questions as asked
    counts = next(iter(scores.values()))  # questions scored: every run answers the same benchmark
    skills = [s for s in synthetic.SKILLS if any(r["meta"]["skill"] == s for r in test)]
    skill_chance = {s: mean_chance([r for r in test if r["meta"]["skill"] == s]) for s in skills}
    skill_chance["overall"] = mean_chance(test)
    accuracy = {name: {**{k: v["accuracy"] for k, v in s["by_skill"].items()}, "overall": s["accuracy"]}
                for name, s in scores.items()}
    plots(paths, log, skills, skill_chance, list(accuracy.items()))

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    n_asked = {"overall": counts["n_scored"], **{k: v["n"] for k, v in counts["by_skill"].items()}}
    skill_rows = [[s, n_asked.get(s, 0), pct(skill_chance[s])] + [pct(a.get(s)) for a in accuracy.values()]
                  for s in ["overall"] + skills]
    # summary.json's keys per question form: open and yes/no questions are scored as MultiMedEval
    # scores open and closed ones, multiple choice by its option letter
    form_rows = []
    for form, label, n, acc, invalid in (("open", "open", "n_open", "open_accuracy", None),
                                         ("closed", "yes/no", "n_closed", "closed_accuracy", "yes_no_invalid_rate"),
                                         ("choice", "multiple choice", "n_mc", "mc_accuracy", "invalid_rate")):
        asked = [r for r in test if r["meta"]["form"] == form]
        if asked:
            form_rows.append([label, counts[n], pct(mean_chance(asked))] + [pct(s[acc]) for s in scores.values()] +
                             [pct(s[invalid]) if invalid else "-" for s in scores.values()])
    rows = {name: read_jsonl(path) for name, path in captions.items()}
    named = {name: {a: sum(r["correct"][a] for r in rs) / len(rs) if rs else None for a in synthetic.LESION_SKILLS}
             for name, rs in rows.items()}
    caption_rows = [[a, len(next(iter(rows.values()))), pct(1 / len(synthetic.CHOICES[a]))] +
                    [pct(named[name][a]) for name in rows] for a in synthetic.LESION_SKILLS]
    first = sum(r["loss"] for r in log[:10]) / len(log[:10])
    last = sum(r["loss"] for r in log[-10:]) / len(log[-10:])
    lines = ["# infimed demo report", "",
             f"A {cfg.hidden_size}-wide, {cfg.num_layers}-layer Qwen2.5-VL-shaped model (vision tower: "
             f"{cfg.vision_depth} blocks of width {cfg.vision_width}, first pretrained on the training captions) "
             f"trained from random weights on synthetic medical VQA, evaluated on {len(test)} held-out benchmark "
             "questions.", "",
             "## Table 1 (`evaluate.py compare`, in %)", "", table, "",
             "The answer forms are the paper's response categories (answers.response_category): a single letter, "
             "an answer phrase first, a chain of thought, another valid form, or invalid. Shuffle Δ: the change in "
             "multiple-choice accuracy when the options are shuffled.", "",
             "## Accuracy per skill (%)", "",
             *md_table(["Skill", "Questions", "Chance", *scores], skill_rows), "",
             "Chance is a uniform guess among the valid answers (4 options, yes/no, or the skill's "
             "answer values for open questions).", "",
             "## Accuracy per question form (%)", "",
             *md_table(["Form", "Questions", "Chance", *scores, *(f"{name}: invalid" for name in scores)], form_rows),
             "", "Invalid: no option letter (multiple choice) or no yes/no (yes/no questions) could be read.", "",
             "## Lesion attributes named in captions (%)", "",
             "Each single-lesion benchmark scan captioned (\"Describe this medical image.\"), "
             "each attribute counted correct when the caption names exactly the true value.", "",
             *md_table(["Attribute", "Scans", "Chance", *captions], caption_rows), "",
             "## Curation", "",
             f"- raw mix: {cur['raw']['questions']} questions, {cur['raw']['captions']} captions, "
             f"{cur['raw']['planted']} planted benchmark items",
             f"- instruction augmentation: {cur['augmented']} records re-rendered with the instruction templates",
             "- response enhancement (option checks): " + ", ".join(f"{k} {v}" for k, v in cur["enhanced"].items()),
             f"- perplexity filter: {cur['captions_kept']} of {cur['raw']['captions']} captions kept",
             f"- decontamination, exact pass: removed {len(cur['removed_exact'])} records; planted items removed: "
             f"{len(cur['planted_removed'])} of {len(cur['planted'])}",
             *[f"  - {p} {'removed' if p in cur['planted_removed'] else '**NOT removed**'}" for p in cur["planted"]],
             f"- decontamination, embedding pass (hash embedder, threshold {cfg.decontam_threshold}): "
             f"{cur['embedding_matches']} further matches, reported and kept. Lesion-free scans of one modality "
             "differ only by noise and the questions come from seven templates, so on this i.i.d. synthetic set "
             "such matches are look-alikes rather than leaks; with real data and a multimodal embedder "
             "(gme-Qwen2-VL) the paper removes them.",
             f"- training records: {cur['train']}", "",
             "## Training", "",
             f"- vision pretraining: {cfg.vision_steps} steps on the training captions; linear-probe accuracy on "
             "the benchmark scans: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in probe.items()),
             f"- `torchrun --nproc_per_node {cfg.nproc} train.py`: {len(log)} optimizer steps, global batch "
             f"{cfg.global_batch}, {cfg.epochs} epochs, lr {cfg.lr} (vision {cfg.lr_vision}), warmup "
             f"{cfg.warmup_ratio} then cosine",
             f"- loss: {first:.3f} (mean of the first 10 steps) -> {last:.3f} (last 10)", "",
             "![loss](loss.png) ![accuracy](accuracy.png)", "",
             "## Time per stage", "",
             *md_table(["Stage", "Wall (s)", "CPU (s)"], [[k, v["wall_s"], v["cpu_s"]] for k, v in timings.items()])]
    with open(os.path.join(paths["out"], "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(paths["out"], "results.json"), "w") as f:
        json.dump({"skills": accuracy, "chance": skill_chance, "captions": named, "loss_first": first,
                   "loss_last": last, "curation": cur}, f, indent=2)
    return accuracy
