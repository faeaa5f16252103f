"""Every prompt of the recipe, and the helpers that write and read the options of a
multiple-choice question, in one place: what the model is asked in training (instruction
augmentation, chain of thought, caption refinement), in evaluation (the MultiMedEval and
multiple-choice instructions, grounding, rephrasing, the judge) and in curation (the verifier).

The appendix A prompts of the paper are word for word ({QUESTION} and {ORIGINAL CAPTION} are
the paper's slots; the PDF renders the numbered steps as a list, kept here as plain lines).
Prompts marked "ours" are this project's where the paper gives none.

    python -c "import prompts; print(prompts.cot_prompt('Which organ?', {'A': 'liver', 'B': 'spleen'}))"
"""
import re

LETTERS = "ABCDEFGHIJ"  # option letters in order (GMAI-MMBench goes up to E, MMMU up to I)

# ---- Instruction augmentation (paper section 3.1): a clarifying instruction per answer form.
# The first template of each list is the canonical one; augmentation picks one per record. The
# canonical yes/no and the bare open template are the MultiMedEval prompts evaluate.py asks with
# (multimedeval vqa.py prefixes YES_NO_PREFIX when the gold is "yes" or "no"), so training
# covers the evaluation prompts.
YES_NO_PREFIX = "Answer the following question with yes or no. "
INSTRUCTIONS = {
    "choice": ["{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
               "{question}\n{options}\nAnswer with the letter of the correct option only."],
    "yesno": [YES_NO_PREFIX + "{question}",
              "{question}\nAnswer with yes or no."],
    "open": ["{question}\nAnswer the question using a single word or phrase.",
             "{question}"],
    "caption": ["Describe this medical image.",
                "Write a short, image-grounded caption for this figure."],
}

# ---- Evaluation: one template per question kind; image placeholders go first with no newline
# after them, as in training and in the Qwen2.5-VL template at inference.
EVAL_PROMPTS = {
    "closed": "{images}" + INSTRUCTIONS["yesno"][0],
    "open": "{images}" + INSTRUCTIONS["open"][1],
    "mc": "{images}" + INSTRUCTIONS["choice"][0],
}
# ours: the grounding analysis (paper section 4.3) asks for the box after the answer
GROUNDING_PROMPT = ("{prompt}\nThen give the bounding box of the image region that supports your answer as "
                    "[x1, y1, x2, y2] in pixel coordinates.")

# ---- Appendix A: the chain-of-thought prompt (response enhancement, and evaluate.py --cot)
COT_PROMPT = """Please carefully analyze the following multiple-choice question by generating a clear, logical chain of thought that leads to the correct answer. To do this effectively, follow the steps below as a general guide for your response:

1. Begin by identifying the key elements of the question and interpreting any relevant facts or assumptions.
2. Consider each option (A, B, C, and D) and reason through its validity based on logic, knowledge, or deduction.
3. Organize your reasoning into a step-by-step format to enhance readability and clarity.
4. After completing your reasoning, indicate the final answer by enclosing the selected option letter within <answer> and </answer> tags, e.g., <answer>A</answer>.
5. Do not include any additional commentary or explanation outside of these tags.

Question:

{QUESTION}"""

# ---- Appendix A: the caption refinement prompt
CAPTION_PROMPT = """You are a medical image captioning assistant. Your task is to rephrase the following scientific image description into a clear, concise, and visually grounded caption that should help a small vision-language model understand what the image shows. Please ensure the caption:

1. Accurately reflects the key visual features shown in the image, such as structures, shapes, colors, and biological elements.
2. Maintains medical correctness, while simplifying overly complex or technical language where appropriate.

Original description:

{ORIGINAL CAPTION}

Now rewrite this as a simplified, image-grounded caption suitable for training a vision-language model."""

# ours: the paper's three acceptance criteria for a rationale ("faithful, logically consistent,
# and correctly aligned with the given options", section 3.1) asked of a verifier as yes/no
VERIFY_PROMPT = """You are reviewing an explanation written for a multiple-choice question about this image.

Question:

{QUESTION}

Explanation:

{RATIONALE}

Is the explanation faithful to the image and the question, logically consistent, and correctly aligned with the given options, supporting option {LETTER}? Answer with yes or no."""

# ours: what a rephrasing model is asked for the rephrase test (paper section 4.3); the answer
# is checked afterwards (robustness.check_rephrasing): same question, options and answer untouched
REPHRASE_PROMPT = ("Rephrase the following question about a medical image so that it asks exactly the same "
                   "thing in different words. Keep every medical term and number, do not answer it and do not "
                   "mention any answer options. Reply with the rephrased question only.\n\nQuestion: {question}")
# the fallback without a model: a rewording per question shape, first matching pattern wins
REPHRASE_TEMPLATES = [(r"^which of the following (.+)$", "Among the options given, which {0}"),
                      (r"^what is the (.+)$", "Can you identify the {0}"),
                      (r"^is there (.+)$", "Does the image show {0}"),
                      (r"^(.+)$", "Based on the image, {0}")]

# ours, after VLMEvalKit's choice extraction: the judge maps an answer the rules cannot read (or
# only infer from prose) to one option letter (MMMU and GMAI-MMBench)
JUDGE_PROMPT = ("Match a model's answer to the options of a single-choice question.\nQuestion: {question}\n"
                "Options:\n{options}\nAnswer: {response}\nReply with the single letter of the option "
                "the answer chooses, or Z if it chooses none or several.")


# ---- Options: writing them, reading them back, the gold letter --------------------------------
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])\s*[.):：]\s*(\S.*?)\s*$")  # "A. x", "(B) y", "C: z"


def format_options(options):
    """{'A': 'CT', 'B': 'MRI'} -> 'A. CT\\nB. MRI' (the layout of every prompt above)."""
    return "\n".join(f"{k}. {v}" for k, v in options.items())


def split_options(text):
    """'stem\\nA. x\\nB. y[\\ninstruction]' -> ('stem', {'A': 'x', 'B': 'y'}): the first run of
    >= 2 lines lettered A, B, ... in order; lines after the run (an instruction such as "Answer
    with the option's letter") are dropped. Without such a run: (the text, None)."""
    lines = text.strip().splitlines()
    options, first = {}, None
    for i, line in enumerate(lines):
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == chr(ord("A") + len(options)):
            options[m.group(1)] = m.group(2)
            first = i if first is None else first
        elif options:
            break
    if len(options) < 2:
        return text.strip(), None
    return "\n".join(lines[:first]).strip(), options


def normalize_question(text) -> str:
    """Lowercase; runs of punctuation and whitespace become one space (for comparing texts)."""
    return re.sub(r"[\W_]+", " ", str(text).lower()).strip()


def parse_gold(answer, options):
    """The gold letter of a short answer: "B", "b", "(B)", "B. text", "B: text" or exactly one
    option's text (compared without case and punctuation); None when it names no single option."""
    a = str(answer).strip()
    if a.upper() in options:
        return a.upper()
    m = re.fullmatch(r"\(?([A-Z])\)?(?:\s*[.:)]\s*.*)?", a, re.S)
    if m and m.group(1) in options:
        return m.group(1)
    hits = [k for k, v in options.items() if normalize_question(v) == normalize_question(a)]
    return hits[0] if len(hits) == 1 else None


def letter_list(options):
    """'A, B, C, and D': the letters as the CoT prompt's step 2 names them."""
    keys = list(options)
    return ", ".join(keys[:-1]) + f", and {keys[-1]}" if len(keys) > 1 else "".join(keys)


def cot_prompt(question, options):
    """The appendix A prompt for one question: the stem and its option lines in {QUESTION}; step 2
    names the question's own letters (the paper's text, "A, B, C, and D", for four options)."""
    text = COT_PROMPT.replace("(A, B, C, and D)", f"({letter_list(options)})")
    return text.replace("{QUESTION}", question.strip() + "\n" + format_options(options))


def gold_letter(record):
    """The gold option letter of a multiple-choice record (its answer given as a letter or as an
    option's text); a ValueError naming the record when the answer is none of its options."""
    letter = parse_gold(record["answer"], record["options"])
    if letter is None:
        raise ValueError(f"record {record.get('id')}: answer {str(record['answer']).strip()!r} is not one of "
                         f"its options {record['options']}")
    return letter
