"""prompts.py: the paper's prompts word for word, and the option helpers every step shares.

    python -m pytest -q tests/test_prompts.py
"""
import pytest

import prompts
from prompts import COT_PROMPT, cot_prompt, format_options, gold_letter, parse_gold, split_options

OPTIONS = {"A": "Liver", "B": "Spleen", "C": "Kidney", "D": "Lung"}


def test_cot_prompt_is_the_papers_appendix_a_text():
    assert COT_PROMPT.startswith("Please carefully analyze the following multiple-choice question")
    assert "2. Consider each option (A, B, C, and D) and reason" in COT_PROMPT
    assert "e.g., <answer>A</answer>." in COT_PROMPT
    assert COT_PROMPT.endswith("Question:\n\n{QUESTION}")


def test_cot_prompt_fills_the_question_with_its_options_and_names_their_letters():
    four = cot_prompt(" Which organ? ", OPTIONS)
    assert four == COT_PROMPT.replace("{QUESTION}", "Which organ?\nA. Liver\nB. Spleen\nC. Kidney\nD. Lung")
    two = cot_prompt("Which side?", {"A": "left", "B": "right"})
    assert "Consider each option (A, and B) and" in two and two.endswith("Which side?\nA. left\nB. right")


def test_evaluation_prompts_are_the_canonical_training_instructions():
    """Training covers the evaluation prompts: each is the first template of its answer form."""
    assert prompts.EVAL_PROMPTS["closed"] == "{images}Answer the following question with yes or no. {question}"
    assert prompts.EVAL_PROMPTS["mc"] == "{images}" + prompts.INSTRUCTIONS["choice"][0]
    assert prompts.EVAL_PROMPTS["open"] == "{images}{question}"


def test_format_then_split_options_round_trip():
    text = "Which organ is shown?\n" + format_options(OPTIONS) + "\nAnswer with the option's letter."
    assert format_options(OPTIONS) == "A. Liver\nB. Spleen\nC. Kidney\nD. Lung"
    assert split_options(text) == ("Which organ is shown?", OPTIONS)


def test_split_options_reads_lettered_lines_at_the_end():
    assert split_options("Which?\nA. x\nB) y\n(C) z") == ("Which?", {"A": "x", "B": "y", "C": "z"})
    assert split_options("Which?\nB. y\nC. z") == ("Which?\nB. y\nC. z", None)  # not A, B, ...
    assert split_options("A. lone") == ("A. lone", None)


@pytest.mark.parametrize("answer, gold", [("B", "B"), ("b", "B"), ("(B)", "B"), ("B. Spleen", "B"),
                                          ("B: Spleen", "B"), ("spleen", "B"), (" Spleen. ", "B"),
                                          ("E", None), ("Bone", None)])
def test_parse_gold(answer, gold):
    assert parse_gold(answer, OPTIONS) == gold


def test_gold_letter_names_the_record_whose_answer_is_no_option():
    assert gold_letter({"id": "q1", "answer": "kidney", "options": OPTIONS}) == "C"
    with pytest.raises(ValueError, match=r"record q1: answer 'Bone' is not one of its options"):
        gold_letter({"id": "q1", "answer": "Bone", "options": OPTIONS})
