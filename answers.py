"""Reading a model's answer to a multiple-choice question: which option it commits to, and in
what form (the paper's response categories). Only the standard library: this file can be copied
alone. Short VQA answers and boxes are scored in vqa.py. Read from the top: parse_choice lists
the rules in their order of precedence and _resolve applies them; a section per rule follows, in
that order, each with the patterns it uses; the response categories come last.

    python -c "from answers import parse_choice; print(parse_choice('The answer is (B).', {'A': 'CT', 'B': 'MRI'}))"
    python -m pytest -q tests/test_answers.py

Where each rule comes from:
- parse_choice: VLMEvalKit's rules (vlmeval/utils/matching_util.py: can_infer_option, exactly one
  standalone option letter; can_infer_text, exactly one option text), the scorer the paper used
  for MMMU and GMAI-MMBench. Ours on top: chain-of-thought answers name several options before
  they conclude, so a final <answer> tag (the paper's appendix A prompt asks for one),
  committing phrases ('the answer is B') and option-by-option verdicts decide first, negated
  mentions ('not A', 'C is incorrect'), the article 'A', names ('hepatitis B') and a
  probability's events ('P(A|I)') do not count as choices, nor do a ranking's runners-up ('the
  second most likely answer is C') or a letter labelled with another option's text ('D)
  Misoprostol' where misoprostol is C), and when nothing else decides, the last line's
  conclusion in prose does ('Therefore, the protein is histone'). Given the question,
  one that asks for the exception ('All of the following are true EXCEPT') is answered by the
  option the response says does not hold ('D is not a tumor suppressor gene'), as a grader who
  reads the question would.
- response_category: the paper's instruction-following categories (section 4.3): single letter,
  answer-prefixed, CoT-style; 'other' and 'invalid' are ours, so that every answer has one.
"""
import re
from collections import Counter


# --------------------------------------------------------------------------------------------
# The parser: its precedence of rules


def parse_choice(response, options, question=None):
    """The option letter a free-text `response` commits to, or None (invalid).

    `options` maps letters ('A'..) to option texts; `question`, when given, tells whether the
    question asks for the exception (asks_exception: 'All of the following are true EXCEPT'),
    where the answer is the option the response says does not hold. Precedence, first rule that
    decides wins:
      1. `<answer>X</answer>`: the last tag's content, resolved by rules 2-8 on that content alone
         (an unclosed final tag counts: generation may stop at the letter); when it names no
         option, the text outside the tags is parsed by rules 2-8 instead.
      2. The whole response is one option: 'B', '(b)', '**B**', 'B.', its text, 'B. <its text>'.
      3. A committing cue; the last one in the text wins (chain of thought concludes last):
         'the (correct|final|best) answer is (B)', 'Answer: **C**', 'I choose D', 'Therefore, B',
         'Option B is correct', 'C: correct', 'A is the most likely because ...', 'Option D is
         more likely to be correct',
         'the most likely diagnosis in this patient is',
         'the next step in management would be to', 'this leaves us with', followed by a letter
         or an option's text ('the answer is ultrasound'; when a letter follows the text it must
         be that text's: 'Answer: CT A', A naming another option, is left to rule 6 and counts
         as A). After a cue that ends in 'is' / 'be' / 'to' / ':', the clause may name the
         option in other words: the option with the largest share (>= 2/3) of its content words
         in the clause, if unique ('is a neurofibroma' -> 'Neurofibromas', 'would be to measure
         the serum electrolytes' -> 'Measure serum electrolytes'), else the one option holding
         all the words of a short clause ('is choledocholithiasis' -> 'Jaundice due to
         choledocholithiasis'); 'A, B, and C', 'this leaves us with X and Y' and 'this leaves
         us with A, acetylation ..., and B, ...' commit to none. An option's text before a committing phrase
         counts too ('X is the most likely diagnosis', 'X is more common, so this is the correct
         answer'), unless it is a hypothesis ('the probability that X is the correct answer'), and
         so does one about the sentence before when that names one option ('Primary roots are
         shorter. This is the answer', '..., making it the most likely answer'). When the
         question asks for the exception, 'B is correct' / 'B is true' says B holds: only phrases
         about the answer commit ('B is the correct answer'). A letter labelled with another
         option's text ('the answer is D) Misoprostol', misoprostol being C) chooses neither; a
         ranking's runners-up commit nothing ('The second most likely answer is C', 'the next
         most likely diagnosis is ...'; not 'the next best step is ...' nor 'the next most
         appropriate step is ...', the best next step), unless the question asks for a
         runner-up, the least or the exception.
      4. An option-by-option review, a line per option opening with its letter or text and a
         verdict ('C) Dog tick: This is the correct answer.', 'Constipation is not a likely
         factor', 'Option C is most likely', 'D) ...: This would be the most effective way
         to ...'): the only option judged best, else the only one
         judged positively while others are rejected, else, every option reviewed, the only one
         not rejected. When the question asks for the exception: the only one called the answer,
         else the only one denied what the question asks ('D) c-erbB1 is not a tumor suppressor
         gene', 'C) is false'; several denied: none). A bare list of the options ('1) X\n2) Y') is
         no review: the line after its last item judges that item only where it names it.
      5. Only when the question asks for the exception: the options a sentence denies what the
         question asks about, named by letter, text or most words ('Hemangiosarcoma is not a
         small round cell tumor', 'the artery of the pterygoid canal does not supply the tube';
         not 'the heart is not able to pump', which is off the question's topic, nor 'C is not
         the answer'): exactly one -> it; several -> only rule 8 may decide.
      6. Standalone option letters (VLMEvalKit's rule): exactly one distinct letter -> it. Not
         letters: the article ('A lesion...', lowercase 'a'), letters inside words / 'e.g.' /
         'B-cell', names ('hepatitis B', 'panel A', 'C. difficile'), a temperature's unit
         ('38.1°C'), letters inside a quoted option text, a probability's events ('P(A|I)',
         'P(~B)'), negated mentions ('not A', 'rather than B', 'C is incorrect', 'not
         demonstrating X', both of 'eliminate B and D'), letters in the consequent of a
         conditional ('If he is unstable, the answer is A'; rule 3 reads its cues so too), and a
         last line cut off while restating the options ('A) The central fascicle is'). Lowercase
         counts only decorated '(b)' or at the very start ('b. ...'). Here and in rule 7, an
         option the next sentence rejects ('... This is not the correct answer') does not count.
      7. Only when rule 6 found no letter: option texts in the response (case-insensitive, whole
         words, a hyphen between words as a space: 'cover-uncover test' for 'Cover Uncover
         Test', but none inside a longer compound: 'non-small-cell' holds no 'Small cell'; a text
         inside a longer matched text ignored, negated mentions dropped): exactly one option ->
         it. Not when the response is cut off mid-sentence after 30 words (an option met on the
         way is no answer), ends by asking a question, or its last line concludes on something
         else ('the most likely diagnosis is ASD').
      8. The last line's conclusion in prose: a concluding sentence ('Therefore, ...', 'In
         conclusion, ...', 'Based on ...', 'the most important factor is ...', 'it is more likely
         that ...') naming exactly one option by its text, its plural ('Endometriomas are the
         most likely') or most of its words, or a last sentence stating one as what its
         subject is ('The patient's CHADS2 score is 2.'), or a last line that is one option,
         answering a question on the line before ('What is the diagnosis?\n\nTuberculosis');
         a last sentence that opens by ranking below the first ('4) The fourth most likely cause
         is X.') concludes on the ranking's first place (_top_ranked; as in rule 3, not where the
         question asks for a runner-up); see _conclusion for what does not count.
    Anything else (several letters, several texts, nothing) -> None. Real responses graded one by
    one, with the sources they come from: tests/data/graded_cot.jsonl.gz.
    """
    return parse_choice_rule(response, options, question)[0]


def parse_choice_rule(response, options, question=None):
    """(parse_choice's letter, the rule that decided it): 'exact', 'cue', 'verdict', 'denied',
    'letter', 'option_text' or 'conclusion' (rules 2-8), prefixed 'answer_tag:' when read inside
    the last <answer> tag (rule 1); 'none' when no rule finds a single option."""
    response, options = _normalized(response, options)
    if not response.strip():
        return None, "none"
    asked = _asked(question)
    ranks = _reads_rankings(question, asked)
    tags = _ANSWER_TAG.findall(response)
    if tags and tags[-1].strip():
        hit, rule = _resolve(tags[-1], options, asked, ranks)
        if hit:
            return hit, "answer_tag:" + rule
    return _resolve(_ANSWER_TAG.sub(" ", response), options, asked, ranks)


# LaTeX around an answer, as models trained on math write it ('Answer: \\( \\text{G} \\)',
# '\\boxed{C}', '$C$'): read as the text it wraps (a '$' of money stays); a degree sign written
# in LaTeX ('38.5^{\\circ}\\text{C}') becomes '°', so that its C is a temperature, as in '38.5°C'
_LATEX_WRAP = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf)\{([^{}]*)\}|\$\s*([A-Za-z])\s*\$")
_LATEX_MATH = re.compile(r"\\[()\[\]]")
_LATEX_DEGREE = re.compile(r"\$?\^\s*\{?\\circ\}?(?:\$|\\\))?(?:\\[,;:!]|~)*|\\(?:text)?degree\b(?:\{\})?")


def _normalized(response, options):
    """One apostrophe ("Crohn’s disease" in an option is "Crohn's disease" in the response),
    LaTeX wrappers read as what they wrap, upper-case letters, option texts without a copy of
    their own letter ('c)\tTo counteract ...', as some MedMCQA options are written)."""
    options = {str(k).upper(): str(v).replace("’", "'") for k, v in options.items()}
    options = {k: re.sub(rf"^\s*\(?{k}[.)]\s+", "", v, flags=re.I) for k, v in options.items()}
    response = _LATEX_DEGREE.sub("°", (response or "").replace("’", "'"))
    for _ in range(3):  # '$\\boxed{\\text{C}}$': wrappers inside wrappers
        response = _LATEX_WRAP.sub(lambda m: m[1] if m[1] is not None else m[2], response)
    return _LATEX_MATH.sub(" ", response), options


def _resolve(text, options, asked=None, ranks=True):
    """(letter or None, the rule that decided: exact, cue, verdict, denied, letter, option_text,
    conclusion or none). `ranks`: a ranking's first place is its choice (_reads_rankings)."""
    hit = _exact(text, options)
    if hit:
        return hit, "exact"
    cue = _last_cue(text, options, asked, ranks)
    if cue:
        return (cue[1] or None), ("cue" if cue[1] else "none")
    hit = _verdicts(text, options, asked)
    if hit is not None:
        return (hit or None), ("verdict" if hit else "none")
    cut = len(text.split()) > 30 and not _complete(text)  # reasoning cut off mid-sentence
    if asked is not None and not cut and (denied := _denied(text, options, asked)):
        if len(denied) == 1:  # the one option said not to hold is the exception asked for
            return next(iter(denied)), "denied"
        hit = _conclusion(text, options, asked, ranks)
        return hit, "conclusion" if hit else "none"
    spans = _text_spans(text, options)
    letters = _letters(text, options, spans, cut)
    found = letters or {s[2] for s in spans}  # option texts count only where no letter stands
    # "Primary roots are shorter. This is not the answer.": the sentence before is rejected
    found -= {_antecedent(text, m.start(), options) for m in _ANAPHOR_REJECT.finditer(text)}
    if not letters and (cut or text.rstrip().endswith("?")):
        found = set()  # an option it mentions on the way is no answer, nor one before its closing question
    last_line = text.rstrip().rfind("\n") + 1
    if not letters and _CUE_BEFORE.search(text, last_line) and not any(s[0] >= last_line for s in spans):
        found = set()  # it concludes on something else: "the most likely diagnosis is ASD"
    if len(found) == 1:
        return next(iter(found)), "letter" if letters else "option_text"
    hit = _conclusion(text, options, asked, ranks)
    return hit, "conclusion" if hit else "none"


# --------------------------------------------------------------------------------------------
# Questions that ask for the exception


# a question that asks for the exception, whose answer is the option the response says does NOT
# hold: "All of the following are true EXCEPT:", "Which of the following is not a tumor suppressor
# gene?", "the least useful", "False about enamel rods is". Read on the question's last sentence
# (a case report's 'does not smoke' asks nothing); 'not ... because' asks for a reason.
_EXCEPTION_QUESTION = re.compile(
    r"\bexcept\b|\bleast\b|(?-i:\bNOT\b)|^\W*not\b|\b(?:which|what)\b[^.?!:]*?\b(?:not|never)\b"
    r"|\b(?:false|untrue|incorrect|wrong)\b\s*(?:about|regarding|statements?|among|in\s+relation|[?:\-–]|$)"
    r"|\b(?:is|are)\s+(?:false|untrue|incorrect|wrong)\b"
    r"|\b(?:is|are|does|do|shall|should|will)\s+not\s+(?:include|contain|have|seen|present|posted)\b", re.I)


def _last_sentence(question):
    """The question's last sentence: what it asks (a case report before it asks nothing)."""
    return re.split(r"(?<=[.?!])\s+(?=[A-Z<])", str(question or "").strip())[-1]


def asks_exception(question):
    """Does the multiple-choice `question` ask for the option that does not hold ('EXCEPT',
    'Which of the following is NOT ...', 'least', 'False about ...')?"""
    last = _last_sentence(question)
    return _EXCEPTION_QUESTION.search(last) is not None and not re.search(r"\bbecause\b", last, re.I)


def _asked(question):
    """For a question asking for the exception, the content words of what it asks about (the
    stems of 'tumor suppressor gene' in 'Which of the following is not a tumor suppressor
    gene?'), against which a response's negations are read; None for any other question."""
    if not asks_exception(question):
        return None
    return set(_stems(question)) - _GENERIC


def _on_topic(clause, asked):
    """Does the negated `clause` deny what the question asks about ('is not a tumor suppressor
    gene', 'is false'), not merely describe ('the heart is not able to pump enough blood')?"""
    return re.search(r"\b(?:true|untrue|false|correct|incorrect)\b", clause, re.I) is not None \
        or not set(_stems(clause)).isdisjoint(asked)


# a negation about the answer itself, not about the option's property: "C is not the correct
# answer", "B can be eliminated" reject an option in any question
_REJECTS_ANSWER = re.compile(r"\bnot\s+(?:the\s+|an?\s+)?(?:(?:correct|right|best|most\s+likely|likely)\s+)?"
                             r"(?:answer|choice|option|it)\b|\beliminat\w*|\brul\w*\s+out\b|\bexclud\w*|"
                             r"\bunlikely\b|\bless\s+likely\b", re.I)
# the words that make a committing phrase speak of the answer, not of the option's truth
_ABOUT_ANSWER = re.compile(r"\b(?:answer|choice|option|best|diagnosis)\b", re.I)


def _commits(phrase, asked):
    """Does a committing phrase choose its option? Always, unless the question asks for the
    exception: there 'B is correct' says B holds, and only a phrase about the answer ('B is the
    correct answer') chooses."""
    return asked is None or _ABOUT_ANSWER.search(phrase) is not None


# --------------------------------------------------------------------------------------------
# Rules 1 and 2: the <answer> tag, a response that is one option


_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*(?:</answer>|$)", re.I | re.S)
_DECOR = "*()[]\"'`“”‘’ \t\n"


# a hyphen between words, read as a space where option texts are matched ('cover-uncover test'
# for 'Cover Uncover Test'): one character for one, so spans stay where they are
_HYPHEN = re.compile(r"(?<=[a-z])-(?=[a-z])")


def _opt_text(text):
    return re.sub(r"\s+", " ", str(text)).strip().strip(".").lower()


def _exact(response, options):
    """The whole response is one option: its letter, its text, or 'B. <text of B>'."""
    s = response.strip(_DECOR).rstrip(".。!").strip(_DECOR)
    if not s:
        return None
    if len(s) == 1 and s.upper() in options:
        return s.upper()
    for letter, text in options.items():
        if s.lower() == _opt_text(text):
            return letter
    m = re.fullmatch(r"([A-Za-z])\s*[.):：]\s*(.+)", s, re.S)
    if m and m.group(1).upper() in options and _opt_text(m.group(2)) == _opt_text(options[m.group(1).upper()]):
        return m.group(1).upper()
    return None


# --------------------------------------------------------------------------------------------
# Rule 3: committing phrases


# committing phrases followed by the chosen option ("the answer is (B)", "Final answer: C")
_CUE_BEFORE = re.compile(
    r"(?:\b(?:final|correct|right|best|most\s+(?:likely|appropriate|accurate|probable))\s+"
    # ("answer choice (B)" names an option, it does not choose it)
    r"(?:answer|option|choice)|\banswer(?!\s+(?:choice|option)\s*[\(\[]?[A-Za-z]\b))\s*"
    r"(?:(?:is|would\s+be|should\s+be|will\s+be|must\s+be|=)\s*)?[:：\-–=]?\s*(?:(?:option|choice|letter)\s*)?"
    r"|\bI\s+(?:would\s+|will\s+|'d\s+)?(?:choose|select|pick|go\s+with)\s*(?:(?:option|choice)\s*)?"
    r"|\b(?:therefore|thus|hence)\s*,?\s*(?:(?:option|choice)\s*)?"
    # "the most likely etiology is (A) coronavirus", "the correct diagnosis would be B", "the most
    # appropriate next step in management would be to repeat the culture"
    r"|\b(?:most\s+(?:likely|probable|appropriate)|correct|best|next\s+step\s+in)\s+"
    r"(?:[\w\-'’]+\s+){1,8}?(?:is|would\s+be|will\s+be)\s*[:：\-–]?\s*(?:to\s+)?(?:(?:option|choice|letter)\s*)?"
    # elimination: "this leaves us with generalized anxiety disorder"
    r"|\b(?:this|that|which)\s+leaves\s+(?:us\s+with\s+)?(?:(?:answer\s+)?(?:option|choice)\s*)?", re.I)
# a rank below the first, right before a cue: "the second most likely answer is", "the 3rd best
# option is", "the next most likely diagnosis is" name a ranking's runners-up, not its choice (on
# one line: "rash second\n\nFinal answer: C" ranks nothing)
_ORDINAL = r"(?:second|third|fourth|fifth|2nd|3rd|4th|5th)(?:[ \t]+|-)"
_RANKED = re.compile(rf"\b(?:{_ORDINAL}(?:most(?:[ \t]+|-)\w+[ \t]+|best[ \t]+)?|"
                     r"next[ \t]+most[ \t]+(?:likely|probable)[ \t]+|(?P<next>next[ \t]+))$", re.I)
_RANKED_BY_NEXT = re.compile(r"most\s+(?:likely|probable)\b|best\s+(?:answer|choice)\b", re.I)


def _ranked(text, cue):
    """Is the cue `cue` (a _CUE_BEFORE match in text) a ranking's runner-up? A bare 'next' ranks
    only 'most likely' / 'most probable' and 'best answer' ('the next most likely diagnosis is',
    'the next best answer is'): 'the next best step', 'the next best option' and 'the next most
    appropriate step' are the choice, the best next one."""
    rank = _RANKED.search(text, max(0, cue.start() - 30), cue.start())
    return rank is not None and (not rank.group("next") or _RANKED_BY_NEXT.match(cue.group(0)) is not None)


# a question whose answer is a runner-up or a last place ("the second most common site", "the
# least likely"), or an exception: the rankings of its answers are read as they stand
_RANK_ASKED = re.compile(rf"\b{_ORDINAL}(?:most|best)\b|\bnext\s+most\s+(?:likely|probable)\b|(?<!\bat\s)\bleast\b",
                         re.I)


def _reads_rankings(question, asked):
    """Does a ranking in an answer to `question` choose its first place? Not where the question's
    last sentence asks for a runner-up or the least (a case report's 'at least 3 months' asks
    nothing), nor where it asks for the exception (`asked`, from _asked, is not None)."""
    return asked is None and _RANK_ASKED.search(_last_sentence(question)) is None


# what stands between a cue's letter and its label: ") ", ": ", " - ", "] " (not the minus of
# "A) -0.8"), on the letter's line, then a quote or bold
_LABEL_SEP = re.compile(r"[\]\*]*(?:[ \t]*(?:[)\]:：—]|[\-–](?=[ \t])))+[ \t]*[\*\"'“‘«]*")
# where a label ends: a sentence's or clause's end, a bracket, the line's end ("D) Misoprostol."),
# not a comma nor an option's letter in brackets ("B: oxytocin, misoprostol and tranexamic acid
# have failed", "B - oxytocin (A) has failed" explain, they label nothing)
_LABEL_END = re.compile(r"s?[\*\"'”’»]*[ \t]*(?:[.;!)\n。；！）（]|\((?![A-Za-z]\))|$)")


def _label_text(after, options, own):
    """The option whose text (three letters or more) is the label written right after a cue's
    letter `own` ('D) Misoprostol.'), or None: the letter's own option where its text opens the
    label (even one holding a comma: 'D) Vancomycin, ceftriaxone, and ampicillin'), else the option
    whose text is the whole label, the longest ('Misoprostol and oxytocin' over 'Misoprostol'), a
    plural or singular of it too. A letter whose label is another option's text chooses neither:
    which one the answer meant, only a reader can tell."""
    sep = _LABEL_SEP.match(after)
    if not sep or sep.end() == 0:
        return None
    head = _HYPHEN.sub(" ", after[sep.end():sep.end() + 300].lower())
    texts = {k: _HYPHEN.sub(" ", _opt_text(t)) for k, t in options.items()}

    def labels(t):  # `t` opens the label, as whole words, and the label ends with it
        for form in (t, t[:-1] if t.endswith("s") else None):
            if form and len(form) >= 3 and head.startswith(form) and _LABEL_END.match(head, len(form)):
                return True
        return False
    if own in texts and len(texts[own]) >= 3 and _text_at(head, 0, texts[own]) is not None:
        return own
    named = [k for k, t in texts.items() if labels(t)]
    return max(named, key=lambda k: len(texts[k])) if named else None


# a cue's conclusion that no option is right: "none of the above", "no correct answer"
_NO_OPTION = re.compile(r"[\s*\"'(]*(?:none\s+of\s+(?:the\s+)?(?:above|options|choices|answers|these)\b|"
                        r"no\s+(?:correct\s+|right\s+)?(?:answer|option|choice)\b)", re.I)
# a second letter after a cue's letter: ", B", " or (C)", "/D"
_MORE_LETTERS = re.compile(r"[\)\]\*\s]*(?:,|or|and|/)\s*(?:(?:and|or)\s+)?(?:option\s+)?[\(\[\*]*[A-Z]"
                           r"(?![\w'’]|-\w|\.\w)")
# "... and B", "... and option (C)": another option a list names
_AND_LETTER = re.compile(r"\band\s+(?:option\s+|choice\s+)?[\(\[]?([A-Z])[\)\]]?(?![\w'’]|-\w|\.\w)")
# a cue whose option should follow at once ("... is", "... would be to", "Answer:"), so that the
# words after it may name an option in other words ("is a neurofibroma" for "Neurofibromas")
_CUE_ENDS_COPULA = re.compile(r"(?:\bis|\bbe|\bto|\bwith|[:：])\s*$", re.I)
# the chosen option followed by a committing phrase ("Option B is correct", "C: correct", "A is the
# most likely because ...")
_CUE_AFTER = re.compile(
    r"(?<![\w'’\-.])((?:option|choice)\s+)?[\(\[\*\"']*([A-Za-z])[\)\]\*\"']*(?:\s*\([^()]{0,60}\))?"
    r"\s*(?:[:\-–]\s*(?:correct|true)\b|,?\s*(?:is|would\s+be|seems(?:\s+to\s+be)?)\s+(?:the\s+)?"
    r"(?:(?:most\s+likely|best|correct|right|final)\s+)*"
    r"(?:(?:correct|true|answer)\b(?!\s+(?:if|in\s+an?|only|unless)\b)|"  # not "B would be correct if ..."
    r"(?:right|best)(?!\s*[a-z])|(?:right|best)\s+(?:answer|choice|option|one)\b|"
    r"(?:most\s+likely(?:\s+to\s+be\s+(?:correct|right|true))?|more\s+likely\s+to\s+be\s+(?:correct|right|true))"
    r"(?=\s*(?:[.,;:!)]|$|because\b|since\b))))", re.I)
# what a committing phrase calls its option: "the answer", "the most likely diagnosis", "the best choice"
_ANSWER_NOUN = (r"(?:(?:most\s+likely|most\s+appropriate|best|correct|right|final)\s+)*"
                r"(?:answer|choice|option|diagnosis)\b")
# an option's text followed by a committing phrase: "Lesser petrosal nerve is the most likely
# answer", "Roseola is more common in infants, so this is the most likely diagnosis", "Aqueductal
# stenosis is the most likely cause" (but not "... that secretin is the cause")
_TEXT_CUE_AFTER = re.compile(r"[\)\]\*\"'\s]*(?:[^.;!?\n]{0,80}?,?\s*\b(?:so|thus|hence|therefore|and|which)\s+"
                             r"(?:this|it|that)?\s*)?(?:is|are|would\s+be|seems\s+to\s+be)\s+(?:the\s+)?"
                             rf"(?:(?:correct|right)\b|{_ANSWER_NOUN}|"
                             r"most\s+(?:likely|probable)\s+(?:cause|explanation|etiology)\b)", re.I)
# a cue or a letter in the consequent of a conditional: "If he is unstable, the answer is A."
_CONDITIONAL = re.compile(r"(?:^|[.!?]\s|\n)\s*(?:\w+,?\s+){0,2}?(?:if(?!\s+(?:we|you)\b)|unless|assuming|supposing)\b"
                          r"[^.!?\n]*$", re.I)  # not "if we look at ...", which only leads in


def _conditional(text, at):
    """Is text[at] in the consequent of a conditional? Searched from the last sentence boundary
    before `at` only (no match can start earlier), so that reading every letter stays linear."""
    return _CONDITIONAL.search(text, max(0, max(text.rfind(c, 0, at) for c in ".!?\n")), at) is not None


# a hypothesis, not a choice: "the probability that X is the correct answer", "if X is correct"
_HYPOTHETICAL_BEFORE = re.compile(r"\b(?:probabilit\w*|likelihood|chance|odds|if|whether|assum\w*|suppos\w*|given)\b"
                                  r"[^.;!?\n]{0,40}$", re.I)
# an option letter right after an option text: "CT (B)", "CT B", "CT, option B", "CT - B"
_LETTER_AFTER_TEXT = re.compile(r"[\s,:\-–]*(?:(?:option|choice)\s+)?(?:[\(\[\*]*([A-Z])|[\(\[]([a-z])[\)\]])"
                                r"(?![\w'’]|-\w|\.\w)")
# a committing phrase about the sentence before it: "Primary roots are shorter. This is the answer
# because ...", "... consistent with the history, making it the most likely answer"
_ANAPHOR_CUE = re.compile(r"\b(?:(?:this|that|it)(?:'s|\s+(?:is|would\s+be|seems\s+to\s+be))|making\s+(?:it|this))\s+"
                          rf"(?:the\s+)?(?:(?:correct|right)\b(?!\s+[a-z])|{_ANSWER_NOUN})", re.I)
# ... and a rejection of it: "This is not the correct answer", "This can't be the answer", "that's not it"
_ANAPHOR_REJECT = re.compile(r"\b(?:this|that|it)(?:(?:'s|\s+is)\s+not|\s+isn't|\s+can(?:not|'t)\s+be|"
                             r"\s+(?:would|could)(?:\s+not|n't)\s+be)\s+(?:the\s+)?(?:(?:correct|right|best)\s+)?"
                             r"(?:answer|option|choice|it)\b", re.I)


def _last_cue(text, options, asked=None, ranks=True):
    """(position of the choice, its letter or '', where its cue starts) of the last committed
    choice ('the answer is B', 'B is correct'; '' when it names several: 'the answer is A or B'),
    or None; in a question asking for the exception, as _commits reads the phrase."""
    found = []
    for m in _CUE_BEFORE.finditer(text):
        if _conditional(text, m.start()):
            continue  # "If the child were younger than 8, the best answer would be D": a hypothesis
        if ranks and _ranked(text, m):
            continue
        rest = text[m.end():]
        lm = re.match(r"[\(\[\*\"'\s]*([A-Za-z])(?![\w'’]|-\w|\.\w)", rest)
        if lm and lm.group(1).upper() in options:
            c, after = lm.group(1), rest[lm.end():]
            # the other options its clause leaves: "this leaves us with A, acetylation ..., and B, ..."
            clause = re.split(r"[.;!?](?:\s|$)|\n", after, maxsplit=1)[0]
            left = {x for x in _AND_LETTER.findall(clause) if x in options and x != c.upper()} \
                if "leaves" in m.group(0).lower() else set()
            if _MORE_LETTERS.match(after) or left:  # "the answer is A or B", "A, B, and C": no single one
                found.append((m.end() + lm.start(1), "", m.start()))
                continue
            if _negated_after(rest, lm.end(), options):  # "Therefore, option D is not the correct answer"
                continue
            labelled = _label_text(after, options, c.upper())
            if labelled and labelled != c.upper():  # "the answer is D) Misoprostol", misoprostol being C
                found.append((m.end() + lm.start(1), "", m.start()))
                continue
            word_follows = _ARTICLE_AFTER.match(after) is not None  # "is a mass", "is A lesion"
            if (c.isupper() and c != "A") or not word_follows:
                found.append((m.end() + lm.start(1), lm.group(1).upper(), m.start()))
                continue
        # "the answer is ultrasound": an option text right after the cue (longest first). When a
        # letter follows the text ("Answer: CT (B)"), it must be that text's letter: "Answer: CT A"
        # with A another option commits to a letter the cue does not settle; the letter rules do.
        head = re.sub(r"^[\s\*\"'(\[]*(?:(?:an?|the)\s+)?", "", rest)
        texts = sorted(((letter, _opt_text(t)) for letter, t in options.items()), key=lambda kv: -len(kv[1]))
        spaced = _HYPHEN.sub(" ", head[:len(texts[0][1]) + 1 if texts else 0].lower())  # the longest option, and one
        for letter, t in texts:
            end = _text_at(spaced, 0, _HYPHEN.sub(" ", t))
            if end is not None:
                then = _LETTER_AFTER_TEXT.match(head, end)
                named = (then.group(1) or then.group(2)).upper() if then else None
                listed = re.match(r"[\s\)\]\*\"']*(?:,|\band\b|\bor\b|/)\s*(?:(?:and|or)\s+)?(?:(?:an?|the)\s+)?",
                                  head[end:], re.I)
                if listed and any(_text_at(head, end + listed.end(), _opt_text(o)) for o in options.values()):
                    found.append((m.end(), "", m.start()))  # "this leaves us with X and Y": no single one
                elif _negated_after(head, end, options):
                    pass  # "Therefore, polycarboxylate cements do not bond": no choice
                elif named is None or named == letter or named not in options:
                    found.append((m.end(), letter, m.start()))
                break
        else:
            loose = _CUE_ENDS_COPULA.search(m.group(0)) and _clause_option(rest, options)
            if loose:
                found.append((m.end(), loose, m.start()))
            elif _NO_OPTION.match(rest):  # "The correct answer is none of the above" (not an option here)
                found.append((m.end(), "", m.start()))
    for m in _CUE_AFTER.finditer(text):
        c = m.group(2)
        if c.upper() in options and (c.isupper() or m.group(1)) and _commits(m.group(0), asked):
            found.append((m.start(2), c.upper(), m.start()))
    for start, end, letter in _text_spans(text, options):  # "anorexia nervosa is the most likely diagnosis"
        cue = _TEXT_CUE_AFTER.match(text, end)
        if cue and not _HYPOTHETICAL_BEFORE.search(text[max(0, start - 60):start]) \
                and _commits(cue.group(0), asked):
            found.append((start, letter, start))
    for m in _ANAPHOR_CUE.finditer(text):
        named = _antecedent(text, m.start(), options)  # (an item of a review is left to rule 4)
        if named and _commits(m.group(0), asked):
            found.append((m.start(), named, m.start()))
    return max(found) if found else None


def _antecedent(text, at, options):
    """The one option that the sentence up to `at`, or else the sentence before it, names by its
    letter or else its text; None when it names none or several."""
    starts = [0] + [m.end() for m in re.finditer(r"[.!?]\s+|\n\s*", text[:at])]
    for clause in (text[starts[-1]:at], text[starts[-2] if len(starts) > 1 else 0:starts[-1]]):
        h = _HEADING.match(clause)
        if h.group(1) or h.group(2) or re.match(r"[^.:：\n]{0,80}[:：]", clause):
            return None  # an item of an option-by-option review ('B) Gang: ...'): rule 4's
        named = _named(clause, options)
        if named:
            return next(iter(named)) if len(named) == 1 else None
    return None


# --------------------------------------------------------------------------------------------
# Rule 4: option-by-option reviews


# an option-by-option review: a paragraph per option opening with its letter or text, then a
# verdict ("C) Dog tick: This is the correct answer", "Constipation is not a likely factor")
_HEADING = re.compile(r"[\s\-*•#>]*(?:(?:first|second|third|next|then|finally|lastly)\s*,\s*)?"
                      r"(?:(?:option|choice)\s+\(?([A-Z])\)?\s*[.):：\-–,]?"  # "Option C:", "Option C,"
                      # "C)", "(C)", "C.", "C -" (not "c-erbB1"), "3)"
                      r"|\(?([A-Z])\)?\s*(?:[.):：]|[\-–](?!\w))|\(?\d+[.)])?[\s*]*", re.I)
# "likely to" describes, it does not judge ("thrombosis is more likely to occur with a stent", "is
# more likely to be fatal"), unless "the most likely to be" ("... the most likely to be the highest
# priority")
_POSITIVE = re.compile(r"\b(?:correct|right|best|most\s+effective|likely(?!\s+to\b)|most\s+likely\s+to\s+be|"
                       r"appropriate|consistent|fits|answer|true)\b", re.I)
# after an option's text at the start of a line: a heading's colon or dash, or a verb
_JUDGED = re.compile(r"[\s*]*(?:[:：\-–]|$|(?:is|are|was|would|seems|appears)\b|\.\s+(?:this|it)\s+is\b)", re.I)
# judged best ("the next most likely" ranks second)
_BEST = re.compile(r"\b(?<!next\s)(?<!second\s)(?:most\s+(?:likely|appropriate|consistent|effective)|correct|best|"
                   r"right)\b", re.I)
_HEDGE = re.compile(r"\b(?:could|may|might|possibl\w*|also)\b", re.I)
_NEGATIVE = re.compile(r"\b(?:not|cannot|no|never|unlikely|incorrect|wrong|less|least|inconsistent|excluded|"
                       r"false)\b|n't", re.I)


def _verdicts(text, options, asked=None):
    """The option an option-by-option review settles on: the only one judged best ('Option C is
    most likely', 'This is the correct answer'), else the only one judged positively while
    others are rejected, else, when every option is reviewed, the only one not rejected. In a
    question asking for the exception: the only one called the answer, else the only one of
    three or more reviewed that is denied ('D) c-erbB1 is not a tumor suppressor gene', 'C) is
    false')."""
    texts = sorted(((k, _opt_text(t)) for k, t in options.items()), key=lambda kv: -len(kv[1]))
    verdict, lines = {}, text.split("\n")
    for i, line in enumerate(lines):
        h = _HEADING.match(line)
        by_letter, rest = (h.group(1) or h.group(2) or "").upper() or None, line[h.end():]
        named = next(((k, t) for k, t in texts if t and rest.lower().startswith(t)
                      and not re.match(r"\w", rest[len(t):len(t) + 1])), None)
        letter = by_letter or (named and named[0])
        if letter not in options or (named and named[0] != letter):
            continue
        if named:
            rest = rest[len(named[1]):]
            if not by_letter and not _JUDGED.match(rest):
                continue  # a paragraph that merely opens with an option's words
        if not rest.strip(" *.:：-–)"):  # "Option B: <its text>" on a line of its own, the verdict below
            rest = next((s for s in lines[i + 1:] if s.strip()), "")
            above = next((s for s in reversed(lines[:i]) if s.strip()), "")
            if _review_heading(above, options, alone=True):
                # the last item of a bare list ("Possible diagnoses include:\n1) X\n2) Y\n\n..."):
                # the line below judges it only where it names it and no other option
                if _named(rest, options) != {letter}:
                    rest = ""
        # the first clause that judges decides: "This is a TKI used for GISTs. However, the mass
        # is not consistent with a GIST." -> rejected
        verdict[letter] = "?"
        for clause in re.split(r"[,;.!?:](?:\s|$)|\s(?:because|since|as|given|but|however|which|that)\s", rest):
            if _NEGATIVE.search(clause):
                denies = asked is not None and _on_topic(clause, asked) and not _REJECTS_ANSWER.search(clause)
                verdict[letter] = "not" if denies else "-"
            elif _POSITIVE.search(clause):
                # "This could also be a correct answer" hedges: positive, not the best
                top = _BEST.search(clause) and not _HEDGE.search(clause)
                verdict[letter] = "best" if top and _commits(clause, asked) else "+"
            else:
                continue
            break
    best = [k for k, v in verdict.items() if v == "best"]
    if asked is not None:
        denied = [k for k, v in verdict.items() if v == "not"]
        if len(best) == 1 or len(denied) > 1:  # several denied: no single exception ('')
            return best[0] if len(best) == 1 else ""
        return denied[0] if len(denied) == 1 and len(verdict) > 2 else None
    plus = [k for k, v in verdict.items() if v in ("best", "+")]
    rejected = [k for k, v in verdict.items() if v == "-"]
    if len(best) == 1 and len(verdict) > 1:
        return best[0]
    if len(plus) == 1 and rejected:
        return plus[0]
    if not plus and len(verdict) == len(options) and len(rejected) == len(options) - 1 and _complete(text):
        return next(k for k in verdict if k not in rejected)
    return None


def _review_heading(line, options, alone=False):
    """Does `line` open an option's review: 'D) Maxillary premolars.', 'Parotid space infection:
    This is also possible', '4) Parotid space infection: ...'? With `alone`, only a heading whose
    review follows on the next line ('D) Maxillary premolars.', 'Option C) <its text>')."""
    h = _HEADING.match(line)
    rest = line[h.end():].lower()
    for t in map(_opt_text, options.values()):
        if t and rest.startswith(t) and re.match(r"[\s*.]*(?:[:：\-–]|$)", rest[len(t):]):
            return not alone or not rest[len(t):].strip(" *.:：-–")
    if (h.group(1) or h.group(2) or "").upper() in options:
        return not alone or not rest.strip(" *.:：-–")
    return False


# --------------------------------------------------------------------------------------------
# Rule 5: the option denied what an EXCEPT question asks


# a negation that may deny an option what the question asks: "does not supply", "is not a tumor
# suppressor gene", "C) is false", "A) Most common method: False."
_DENIAL = re.compile(r"\b(?:is|are|was|were|does|do|did|would|could|can|should|will|may)\s*(?:not|n't)\b|\bcannot\b|"
                     r"\bnot\s+(?:true|correct)\b|(?:\b(?:is|are)\s+|[:\-–]\s*)(?:false|untrue|incorrect)\b", re.I)


def _denied(text, options, asked):
    """The options a response says do not hold what the question asks about: in each sentence
    with such a negation ('The artery of the pterygoid canal does not supply the tube', 'D)
    c-erbB1 is not a tumor suppressor gene', 'C) is false'; not one about the answer itself, 'C
    is not the correct answer'), the options its subject names by letter, text or most words."""
    denied = set()
    for sentence in re.split(r"(?<=[.;!?])\s+|\n", text):
        m = _DENIAL.search(sentence)
        predicate = re.split(r"[,;]|\b(?:and|but|because|since|so|which)\b", sentence[m.end():])[0] if m else ""
        if not m or not _on_topic(m.group(0) + predicate, asked) or _REJECTS_ANSWER.search(m.group(0) + predicate):
            continue
        subject = re.split(r",|\b(?:because|since|but|while|whereas|although|if|when)\b", sentence[:m.start()])[-1]
        spans = _text_spans(subject, options, keep_negated=True)
        named = _letters(subject, options, spans) | {k for _, _, k in spans}
        denied |= named or {k for k in [_clause_option(subject, options)] if k}
    return denied


# --------------------------------------------------------------------------------------------
# Rule 6: standalone option letters


# a single letter standing alone: not inside a word, not "e.g."/"i.e.", not "B-cell", not "A's",
# not a temperature's unit ("38.1°C")
_LETTER = re.compile(r"(?<![\w'’\-.°])(?!(?<=°[ \t])[CFcf])([A-Za-z])(?![\w'’]|-\w|\.\w|\.\s+[a-z]{4,})")
# the options a response sets aside as a group: "the other viruses listed (B, C, D, and E)"
_OTHERS_BEFORE = re.compile(r"\bothers?\b(?:\s+[\w\-]+){0,3}?\s*[\(\[:,]?\s*"
                            r"(?:[A-Za-z][\)\]]?\s*(?:,|\band\b|\bor\b)\s*)*"
                            r"(?:(?:and|or)\s+)?(?:options?\s+)?$", re.I)
# a capital letter that names a label in the figure: "the area labelled B", "region C"
_LABEL_BEFORE = re.compile(r"\b(?:labell?ed|label|marked|mark|region|area|structure|part|panel|point|letter)\s*$",
                           re.I)
# words after which a capital letter names a thing, not an option: "hepatitis B", "panel A"
_NAMED_BEFORE = re.compile(r"\b(?:type|hepatitis|hep|vitamin|grade|class|stage|group|phase|zone|factor|cn|le\s+fort|"
                           r"complex|lead|figure|fig|panel|part|segment|point|plan|hemophilia|haemophilia|cluster|"
                           r"influenza|protein|category)s?\.?\s*$|\bnerve[ \t]*\Z", re.I)
# "A" followed by a word is the article, except before these (as in "A or B", "A is correct")
_ARTICLE_AFTER = re.compile(r"[ \t]+(?!(?:and|or|nor|is|was|are|were|seems|would|could|might|may|"
                            r"as|vs|versus|to|then|than|with|because|since|but|fits|matches)\b)\w")


def _named(text, options):
    """The options `text` names: by standalone letters, else by their texts."""
    spans = _text_spans(text, options)
    return _letters(text, options, spans) or {s[2] for s in spans}


def _letters(text, options, spans, cut=False):
    """The options that standalone letters in `text` name (rule 6), `spans` being its option texts;
    `cut`: the text is cut off mid-sentence."""
    # options whose texts are figure labels ("A", "Region B"): a letter after a label word names
    # the option with that text, which need not be the option with that letter
    label_of = {m.group(1).upper(): k for k, t in options.items()
                if (m := re.fullmatch(r"(?:[a-z]+\s+)?([A-Za-z])", str(t).strip(), re.I))}
    letters = set()
    for m in _LETTER.finditer(text):
        before = text[max(0, m.start(1) - 60):m.start(1)]
        if label_of and _LABEL_BEFORE.search(before) and m.group(1).upper() in label_of:
            if not _NEG_BEFORE.search(before) and not _negated_after(text, m.end(1), options):
                letters.add(label_of[m.group(1).upper()])
            continue
        if any(s <= m.start(1) < e and (e - s > 1 or _names_text(text, s, k)) for s, e, k in spans):
            continue  # part of an option's text ("Both A and B"), or a one-letter text named ("group is B")
        if cut and _restating(text, m.start(1), options):
            continue  # cut off while listing the options: "A) The central fascicle is"
        if _is_letter_at(text, m, options) and not _NEG_BEFORE.search(before) and not _OTHERS_BEFORE.search(before) \
                and not _negated_after(text, m.end(1), options) and not _conditional(text, m.start(1)):
            letters.add(m.group(1).upper())
    return letters


# a one-letter option text that the words before it name, as a clause ('blood group is B', 'Blood
# group: B', 'hepatitis B and C'), or that follows its own option's letter ('C (B)', 'Option C: B')
_NAMED_CLAUSE = re.compile(r"\b(?:type|hepatitis|vitamin|group|stage|lead|grade|class)s?\b[^.;!?\n]{0,40}?"
                           r"(?:\b(?:is|was|be|are)|:|\b[A-Z]{1,4}\s*(?:,|\band\b|\bor\b|/))\s*$", re.I)


_OWN_LETTER_BEFORE = re.compile(r"(?<![\w'’\-.])([A-Z])\s*(?:[)\].:\-–]\s*[(\[]?|[(\[])\s*\Z")


def _names_text(text, at, letter):
    """Is the one-letter option text at `at` (option `letter`'s) the text, not a letter?"""
    before = text[max(0, at - 80):at]
    own = _OWN_LETTER_BEFORE.search(before)
    return _NAMED_CLAUSE.search(before) is not None or (own is not None and own[1] == letter)


def _is_letter_at(text, m, options):
    """Does the single-letter token matched by `m` name an option (and not an article)?"""
    c = m.group(1)
    if c.upper() not in options:
        return False
    before, after = text[max(0, m.start(1) - 40):m.start(1)], text[m.end(1):m.end(1) + 200]
    if _in_probability(before, after):
        return False
    if before.endswith(("(", "[", "**", '"', "'")) and after.startswith((")", "]", "**", '"', "'")):
        return True  # decorated: "(b)", "**A**"
    if _NAMED_BEFORE.search(before):
        return False
    if c.islower():  # lowercase only at the very start ("b.", "b)"), else "a" is the article
        at_start = m.start(1) == len(text) - len(text.lstrip(_DECOR))
        return at_start and re.match(r"\s*(?:[.):：]|$)", after) is not None
    if c in "AI" and _ARTICLE_AFTER.match(after):  # "A lesion", "A 45-year-old", "I think"
        # unless its option's text follows where the article would be 'an' ("A X-ray", "A MRI"),
        # not where 'a' is right ("A simple lipid is made of ...")
        word = after.strip()
        an = re.match(r"[aeiouAEIOU]|[FHLMNRSX](?![a-z])", word) is not None
        return an and word.lower().startswith(_opt_text(options[c]))
    return True


def _in_probability(before, after):
    """Is the text between `before` and `after` an event in a probability: 'P(A|I)', 'P(~B)',
    'P(Serotonin syndrome|D)'?"""
    return re.search(r"\bP\(~?\s*$|\|\s*~?\s*$", before, re.I) is not None or re.match(r"\s*\|", after) is not None


def _restating(text, at, options):
    """Is the letter at `at` the heading of a last line, cut off, that restates its option
    ('... the options given are as follows:\nA) The central fascicle is')?"""
    start = text.rfind("\n", 0, at) + 1
    h = _HEADING.match(text, start)
    letter = (h.group(1) or h.group(2) or "").upper()
    rest = text[h.end():].strip(" *").lower()
    return letter in options and "\n" not in text[at:] and h.start(1 if h.group(1) else 2) == at and \
        rest != _opt_text(options[letter]) and _opt_text(options[letter]).startswith(rest)


# --------------------------------------------------------------------------------------------
# Rule 7: option texts, and the negations around options


def _text_spans(text, options, keep_negated=False, plural=False):
    """Spans of option texts in `text`, where an option inside a longer matched option does not
    count ('mass' inside 'mass effect'), and negated mentions ('no fracture') are dropped unless
    `keep_negated`; with `plural`, a text's plural before 'are' counts too ('Endometriomas are'
    for 'Endometrioma'). A hyphen between words reads as a space, but a text inside a longer
    hyphenated compound is none ('non-small-cell lung cancer' is no 'Small cell lung cancer')."""
    low, texts = text.lower(), {letter: _opt_text(t) for letter, t in options.items()}
    spaced, texts = _HYPHEN.sub(" ", low), {k: _HYPHEN.sub(" ", t) for k, t in texts.items()}
    spans = [(i, e, letter) for letter, t in texts.items() for i, e in _occurrences(spaced, t, plural)
             if not (_HYPHEN.match(low, i - 1) or _HYPHEN.match(low, e))  # not inside a compound: non-small-cell
             and (len(t) > 1 or not t.isalpha() or _letter_text_at(text, i))]
    kept = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and o[1] - o[0] > s[1] - s[0]
                                        for o in spans)]
    return [s for s in kept if (keep_negated or not _NEG_BEFORE.search(low[max(0, s[0] - 60):s[0]])
                                and not _negated_after(text, s[1], options))
            and not _in_probability(low[max(0, s[0] - 10):s[0]], low[s[1]:s[1] + 10])]


# "I" as the pronoun where _ARTICLE_AFTER lets it be a letter: "I'd say", "I would pick"
_PRONOUN_AFTER = re.compile(r"'[a-z]|\s+(?:would|could|might|may|am|was|will|should|can|do|did|have|had|must)\b")


def _letter_text_at(text, i):
    """Is the one-letter option text found at `i` a name ('vitamin A', 'lead I', 'blood group O',
    a figure's label 'B') rather than the article or the pronoun ('like a medical expert', 'A
    desmosome is', 'I think')? After a naming word any letter names ('vitamin k'), elsewhere
    only a capital."""
    c = text[i]
    if _NAMED_BEFORE.search(text[max(0, i - 40):i]):
        return True
    if not c.isupper():
        return False
    return not (c in "AI" and _ARTICLE_AFTER.match(text, i + 1) or c == "I" and _PRONOUN_AFTER.match(text, i + 1))


# Option texts are found with str methods, not regexes built per option: a pattern per option
# text would be compiled anew for every item once re's small cache is full.
def _is_word_char(s, i):
    return 0 <= i < len(s) and (s[i].isalnum() or s[i] == "_")


def _text_at(s, i, t, plural=False):
    """Where the lower-case option text `t` ends when it stands at s[i] as whole words
    (case-insensitive), or with `plural` as its plural before 'are' / 'were' ('Endometriomas
    are'), else None."""
    end = i + len(t)
    if not t or s[i:end].lower() != t:
        return None
    if plural and re.search(r"[a-z]{4}$", t) and re.match(r"s\s+(?:are|were)\b", s[end:end + 10]):
        end += 1  # a plural subject ('Endometriomas are ...'), not a verb ('increases') nor "Type I" + "s"
    return None if _is_word_char(s, end) else end


def _occurrences(low, t, plural=False):
    """(start, end) of each occurrence of the lower-case option text `t` in the lower-cased `low`
    as whole words."""
    i = low.find(t) if t else -1
    while i >= 0:
        if not _is_word_char(low, i - 1) and (end := _text_at(low, i, t, plural)) is not None:
            yield i, end
            i = low.find(t, end)
        else:
            i = low.find(t, i + 1)


# negations around a letter or an option text: "not A", "rather than B", "C is incorrect" (a
# comma or period before "not" starts a contrast instead: "ultrasound, not a CT"). The negated
# phrase may be a list: "not a CT or an MRI"; after a verb that sets options aside, one joined by
# "and" too ("eliminate B and D"; after "not" or "no", "and" may start a new clause: "no crystals
# and septic arthritis is the most likely").
_NEGATED = (r"\s+(?:\w+ing\s+)?"  # "not demonstrating displacement"
            r"(?:(?:options?|choices?|answers?|an?|the|region|area|part|panel|structure|label(?:l?ed)?|marked)\s+){0,2}"
            r"(?:(?:[\w\-]+\s+){0,3}?[\w\-]+\s*(?:,|\bor\b|\bnor\b%s)\s*(?:(?:an?|the)\s+)?){0,3}[\(\[\*\"']*$")
_NEG_BEFORE = re.compile(r"(?:\bnot|n't|\bnor|\brather\s+than|\binstead\s+of|\bexcept|\bunlike|\bno)" + _NEGATED % ""
                         + r"|(?:\bexclud\w*|\beliminat\w*|\brul\w*\s+out)" + _NEGATED % r"|\band\b", re.I)
_NEG_AFTER = re.compile(r"[\)\]\*\"':\s\-–]*(?:(?:is|are|was|were|seems|would\s+be|can\s+be|"
                        r"(?:do|does|did|would|could|can|may)(?=\s*(?:not|n't)))\s*)?"
                        r"(?:(?:very|therefore|thus|also|probably|much|highly|quite|so|then)\s+)?"  # "is very unlikely"
                        r"(?:not\b|n't\b|incorrect\b|wrong\b|unlikely\b|inconsistent\b|rarely\b|ruled\s+out\b|"
                        r"less\s+(?:likely|consistent|typical|probable|appropriate)\b|excluded\b|eliminated\b|"
                        r"false\b)", re.I)


def _negated_after(text, end, options):
    """Is the option mention ending at `end` the subject of a negative predicate, maybe as part
    of a list: 'B is incorrect', 'Rhinovirus and adenovirus are not typically associated',
    'Options B, C, D and E are less consistent'?"""
    rest, items = text[end:end + 300], sorted((_opt_text(t) for t in options.values()), key=len, reverse=True)
    while True:  # skip ", C", " and influenza virus", " or (D)"
        m = re.match(r"\s*(?:,|\band\b|\bor\b|/)\s*(?:(?:an?|the|option|choice)\s+)?", rest, re.I)
        if not m:
            break
        after = rest[m.end():]
        item = re.match(r"[\(\[]?[A-Z][\)\]]?(?![\w'’])", after)
        end = item.end() if item else next((e for e in (_text_at(after, 0, t) for t in items) if e is not None), None)
        if end is None:
            break
        rest = after[end:]
    return _NEG_AFTER.match(rest) is not None


# --------------------------------------------------------------------------------------------
# Rule 8: the last line's conclusion in prose


# a concluding sentence: "Therefore, the protein is histone", "In conclusion, the most likely
# explanation is ...", "the patient's prognosis is worst with hepatitis E", "it is more likely
# that the cells are chief cells", "X is more likely, because ..." (but not "more likely to
# divide", "more likely in smokers", "would be more likely if ...")
_CONCLUDING = re.compile(r"\b(?:therefore|thus|hence|so(?!\s+that\b)|overall|conclu\w*|infer\w*|"
                         r"in\s+(?:answer|summary)|based\s+on|most\s+(?!of\b)\w+|"
                         r"more\s+likely(?=\s*(?:[,.;]|$|because|since|that))|"
                         r"best|highest|greatest|worst|earliest|answer|correct|must|should)\b", re.I)
# ... or opens by ranking below the first: "The third most likely cause is idiopathic", "2) The
# next most likely diagnosis is ..." (not "Therefore, the diagnosis is meningioma, the second most
# common tumour", which describes the choice, nor "the next most appropriate / important step", the
# choice)
_RUNNER_UP = re.compile(rf"[\W_]*(?:(?:the|my)\s+)?(?:{_ORDINAL}(?P<sup>most(?:[ \t]+|-)(?!of\b)\w+|best)|"
                        r"next[ \t]+(?P<next>most[ \t]+(?!appropriate\b)\w+)(?![ \t]+step\b))\b", re.I)
# ... that sets the option aside instead: "so we can eliminate the sixth branchial arch"
_LIST_NUMBER = re.compile(r"^[\s\-*•#>]*(?:\d+|[A-Za-z])[.)]\s+")  # a list item's number: "3) ..."
_SET_ASIDE = re.compile(r"\b(?:eliminat\w*|exclud\w*|rul\w*\s+out|reject\w*)\b", re.I)


def _complete(text):
    """Does `text` end as a sentence does (not cut off by a token budget mid-sentence)?"""
    return re.search(r"[.!?)\"'*]\s*$", text) is not None


def _conclusion(text, options, asked=None, ranks=True):
    """The option a complete response's last line concludes on. Going back from the line's last
    sentence, past sentences that name no option or only that one: the first concluding sentence
    ('Therefore, the protein is histone', 'In conclusion, ... is that the girl is a false
    virgin.') naming exactly one option, by its text or, after its last 'is' / 'be', by most of
    its content words ('is increased cortisol levels' for 'Increased plasma cortisol'). Not when
    the sentence rejects it ('so that's not it', 'so we can eliminate X'; a 'not' before the verb
    belongs to the question: 'the nerve that is not involved ... is the trigeminal nerve'), hedges
    between it and something else after the verb ('... or a drug reaction'; 'the contraindication
    to one or more vaccines is X' does not), or the line is the last item of an
    option-by-option review. The response's last sentence needs no concluding word where it states
    an option as what its subject is ('The patient's CHADS2 score is 2.'; _states), unless the
    sentences before it name other options (the last of parallel statements, '... is seen in
    pemphigoid.\n... is seen in impetigo.') and the sentence just before it does not announce the
    answer ('Now, we can answer the question.'). In a question asking for the exception a negation may
    conclude ('the dorsum of the arm is the least preferred site', 'X is not a small round cell
    tumor'), one about the answer itself may not ('X is not the answer'); a statement does not."""
    lines = [s for s in text.split("\n") if s.strip()]
    if len(lines) > 1 and lines[-2].rstrip(" *").endswith("?") and (hit := _exact(lines[-1], options)):
        return hit  # the answer to the question on the line before: "What is the diagnosis?\n\nTuberculosis"
    if not _complete(text):
        return None  # cut off mid-sentence: no conclusion yet
    # the last item of an option-by-option review (not of a bare list of the options, a heading
    # under a heading): rule 4's verdicts or nothing
    if _review_heading(lines[-1], options) or len(lines) > 1 and _review_heading(lines[-2], options, alone=True) \
            and not (len(lines) > 2 and _review_heading(lines[-3], options, alone=True)):
        return None
    line = _LIST_NUMBER.sub("", lines[-1])
    sentences = re.split(r"(?<=[.!?])\s+", line)
    if ranks and (rank := _RUNNER_UP.match(sentences[-1])):  # a ranking's last place: its first place concludes
        return _top_ranked(text, options, rank.group("sup") or rank.group("next"))
    # the options named just before the last sentence, on its line or the line before, unless
    # the sentence just before announces the answer ("Now, we can answer the question.", "... and
    # come to a conclusion.")
    listed = {s[2] for s in _text_spans(" ".join(lines[-2:-1] + sentences[:-1]), options)}
    if len(sentences) > 1 and re.search(r"\b(?:answer\s+(?:the|this)\s+question|come\s+to\s+a\s+conclusion)\W*$",
                                        sentences[-2], re.I) and not _NEGATIVE.search(sentences[-2]):
        listed = set()
    seen = set()  # the options named after the sentence at hand
    for k, sentence in enumerate(reversed(sentences)):
        spans = _text_spans(sentence, options, keep_negated=asked is not None, plural=True)
        named = {s[2] for s in spans}
        tail = re.split(r"\b(?:is|are|be|was|were|must|should)\s+", sentence)[-1]
        if not named and tail != sentence and (loose := _clause_option(tail, options)):
            named = {loose}
        if not named:
            continue
        words = sentence  # the sentence outside the option's own words ('False virgin')
        for start, end, _ in sorted(spans, reverse=True):
            words = words[:start] + " " + words[end:]
        if not spans:  # named in other words, whose own 'less' negates nothing ('is less potent ...')
            own = _stems(options[next(iter(named))]).keys()
            words = re.sub(r"[\w'’]+", lambda w: " " if _stems(w.group()).keys() & own else w.group(), words)
        # a negation counts after the verb: "the nerve that is not involved in olfaction is the
        # trigeminal nerve" concludes, "..., so that's not it" and "so we can eliminate X" do not
        predicate = re.split(r"\b(?:is|are|be|was|were)\s+", words)[-1]
        negated = _REJECTS_ANSWER.search(predicate) if asked is not None else _NEGATIVE.search(predicate)
        concludes = _CONCLUDING.search(words) or asked is not None and re.search(r"\bleast\s+\w", words, re.I) \
            or k == 0 and asked is None and not listed - named and not _NEGATIVE.search(words) \
            and _states(sentence, tail, spans)
        concludes = concludes and not (ranks and _RUNNER_UP.match(sentence))  # "The fourth most likely cause is X"
        # a hedge: 'or' after the verb ('is X or a drug reaction') or next to the option anywhere
        # ('whether this is X or a fungal infection is unclear'; not 'one or more vaccines ... is X')
        hedged = re.search(r"\bor\b", predicate) or any(
            re.match(r"[\s,]*(?:\w+\s+)?or\b", sentence[e:]) or re.search(r"\bor\s+(?:\w+\s+)?$", sentence[:a])
            for a, e, _ in spans)
        if len(named) == 1 and seen <= named and concludes and not hedged and not negated \
                and not _SET_ASIDE.search(predicate):
            return named.pop()
        seen |= named
        if len(seen) > 1:
            return None
    return None


def _top_ranked(text, options, superlative):
    """The option a ranking puts first ('1) The most likely cause ... is congenital. 2) The next most
    likely cause is ...'): the last sentence before its runners-up with the runners-up's own
    superlative ('most likely', 'best'; not 'Most patients ...') that names one option, by its text
    or after its last 'is' / 'be'; None when that sentence names none or several, or negates
    ('... is to ensure that she does not have hepatitis B'; ', not LDH' sets another aside)."""
    first = re.compile(r"\b" + re.sub(r"[ \t\-]+", r"[\\s\\-]+", superlative) + r"\b", re.I)
    for sentence in reversed(re.split(r"(?<=[.!?])\s+|\n+", text)):
        sentence = _LIST_NUMBER.sub("", sentence)
        if _RUNNER_UP.match(sentence) or not first.search(sentence):
            continue
        sentence = re.sub(r",\s*(?:and\s+)?not\s+[^,.;!?]*", "", sentence)  # "... is troponin I, not LDH"
        named = {s[2] for s in _text_spans(sentence, options)}
        tail = re.split(r"\b(?:is|are|be)\s+", sentence)[-1]
        if not named and tail != sentence and (loose := _clause_option(tail, options)):
            named = {loose}
        return named.pop() if len(named) == 1 and not _NEGATIVE.search(sentence) else None
    return None


def _states(sentence, tail, spans):
    """Does the response's last sentence state an option as what its subject is, with no
    concluding word ('The patient's CHADS2 score is 2.', 'The mechanism of action of these drugs
    is to increase dopamine synthesis.')? After its last 'is' / 'be' (`tail`) stands the option's
    text with at most three other words, or, where no text stands (`spans` empty), most of the
    option's words. Not a conditional ('If the fetus is ..., the dose is 6 mg ...') or an addition
    ('She is also taking X, which we need to switch to Y'); _conclusion rules out a negation
    outside the option's words ('It would not be necessary to wait 7 days', not 'FVC: no
    change')."""
    if tail == sentence or re.match(r"\W*if\b", sentence, re.I) or _HEDGE.search(sentence):
        return False
    start = len(sentence) - len(tail)
    if any(a < start for a, _, _ in spans):
        return False
    rest = tail
    for a, b, _ in sorted(spans, reverse=True):
        rest = rest[:a - start] + " " + rest[b - start:]
    return not spans or len(re.findall(r"\w+", rest)) <= 3


# --------------------------------------------------------------------------------------------
# An option named in other words


_STOP = set("a an the of to and or in on for with by at from as is are be this that his her their its "
            "patient patient's which would should".split())
# "two" answers the option "2"
_NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def _stems(text):
    """Content words, crudely stemmed, so that 'measuring the serum electrolytes' and 'Measure
    serum electrolytes', 'a neurofibroma' and 'Neurofibromas', 'rod' and 'rods', 'remove' and
    'Removal', 'produce and circulate' and 'Production and circulation', 'sensitivity' and
    'sensitive' share theirs, and so do
    British and American spellings ('Preterm labour' and 'preterm labor', 'haemorrhage' and
    'hemorrhage': MedMCQA's options are written in British English) and numbers ('two', '2');
    counted, so that 'oxidase-negative' in 'Gram-negative, oxidase-negative rods' needs a second
    'negative'."""
    words = re.findall(r"[a-z0-9]+(?:['’][a-z]+)?", text.lower())
    words = [_NUMBER_WORDS.get(w) or re.sub(r"(?<=\w)our$", "or", re.sub(r"(?<=\w)[ao]e(?=\w)", "e", w))
             for w in words]
    return Counter(re.sub(r"(?:ation|ition|tion|ion|ity|ate|ing|ed|es|s|e|ly)$|(?<=\w{4})al$", "", w)
                   if len(w) > 3 else w for w in words if w not in _STOP)


# the words of a question that asks for the exception that do not say what it is about
_GENERIC = set(_stems("all of the following these statements statement true false untrue correct incorrect "
                      "except which what one not least none regarding about feature"))


def _clause_option(text, options):
    """The option that the clause opening `text` names in other words: the one with the largest
    share (at least 2/3) of its content words in the clause, unique; else the one option holding
    all the words of a clause of at most three content words ('choledocholithiasis' for 'Jaundice
    due to choledocholithiasis'); None when the clause is negated ('not X') or no option stands
    out."""
    clause = re.split(r"[.;!?](?:\s|$)|\n", text[:300], maxsplit=1)[0]
    if re.match(r"[\s*\"'(]*(?:not|never|unlikely|neither|none)\b", clause, re.I):
        return None
    words, own = _stems(clause), {k: _stems(t) for k, t in options.items()}
    share = {k: sum((stems & words).values()) / sum(stems.values()) for k, stems in own.items() if stems}
    best = sorted(share.items(), key=lambda kv: -kv[1])
    if best and best[0][1] >= 2 / 3 and (len(best) == 1 or best[1][1] < best[0][1]):
        return best[0][0]
    # a short clause all of whose words belong to one option only: "is choledocholithiasis" for
    # "Jaundice due to choledocholithiasis", "is lung cancer" for "Increased risk of lung cancer"
    within = [k for k, stems in own.items() if words and not set(words) - set(stems)]
    return within[0] if len(within) == 1 and len(words) <= 3 else None


# --------------------------------------------------------------------------------------------
# The paper's response categories


# response_category's answers, in the order the tables list them
CATEGORIES = ("single_letter", "answer_prefixed", "cot", "other", "invalid")
# an answer phrase that opens a response with no committing cue: "Choice: B", "My choice is B."
_OPENER = re.compile(r"[\s*\"'(\[]*(?:(?:my|the|final|correct|selected|chosen)\s+)*"
                     r"(?:answer|option|choice|selection)\s*(?:is\b|[:：])[\s*\"'(\[]*", re.I)
# what makes the words before an answer phrase reasoning rather than a lead-in ("I think the")
_REASONING = re.compile(r"[.!?;\n]|\b(?:so|because|since|as|given|therefore|thus|hence)\b", re.I)


def response_category(response, options, question=None):
    """Instruction-following category of a multiple-choice response. The paper (section 4.3)
    sorts answers to its direct-letter prompt into single-letter, answer-prefixed and CoT-style;
    valid answers of no such form are 'other' (examples for the options A. X-ray, B. Magnetic
    resonance imaging, C. Ultrasound):

      single_letter    only the letter, decorated or not, or the letter with its own option text:
                       'B', '(b)', '**B**', 'B.', 'B. Magnetic resonance imaging'
      answer_prefixed  an answer phrase (or an <answer> tag) introduces the choice, after at most
                       three words that are no reasoning; a short reason may follow: 'Answer: B',
                       'The answer is B.', 'I think the answer is B.', 'My choice is B.',
                       'The correct option is (B) MRI, given the contrast.', '<answer>B</answer>'
      cot              reasoning first, then the choice, stated by a concluding phrase or an
                       <answer> tag, or first named after at least 8 words of reasoning:
                       'The image shows soft tissue contrast, so the answer is B.',
                       'Bright soft tissue contrast.\n<answer>B</answer>'
      other            a valid answer in none of these forms: the bare option text ('Ultrasound'),
                       a letter with a reason or a verdict but no answer phrase before it ('B,
                       because of the contrast', 'B is correct.', 'B. The contrast shows an
                       MRI.'), a short remark naming one option ('Looks like magnetic resonance
                       imaging.')
      invalid          parse_choice finds no single option ('A or B', 'I cannot tell.')
    """
    letter, rule = parse_choice_rule(response, options, question)
    if letter is None:
        return "invalid"
    s = response.strip(_DECOR).rstrip(".").strip(_DECOR)
    if rule == "exact":
        return "single_letter" if len(s) == 1 or re.fullmatch(r"[A-Za-z]\s*[.):：]\s*(.+)", s, re.S) else "other"
    text, opts = _normalized(response, options)
    if rule.startswith("answer_tag"):
        stated = text.lower().rindex("<answer>")
    elif rule == "cue":  # where the deciding cue starts, read as the rule read it
        text = _ANSWER_TAG.sub(" ", text)
        asked = _asked(question)
        at, _, stated = _last_cue(text, opts, asked, _reads_rankings(question, asked))
        if not (stated < at and _CUE_BEFORE.match(text, stated)):  # a verdict after the choice: "B is correct"
            stated = None
    elif rule == "conclusion":  # the last line concludes
        return "cot" if len(response[:response.rstrip().rfind("\n") + 1].split()) >= 8 else "other"
    else:
        stated = None
    if stated is None:  # no answer phrase before the choice: where the choice is first named
        spots = [m.start(1) for m in _LETTER.finditer(text) if m.group(1).upper() == letter]
        spots += [m.start() for m in re.finditer(re.escape(_opt_text(opts[letter])), text.lower())]
        first = min(spots, default=0)
        opener = _OPENER.match(text)
        if opener and opener.end() == first:
            stated = 0  # "Choice: B", "My choice is B."
        else:
            return "cot" if len(text[:first].split()) >= 8 else "other"
    lead = re.sub(r"\b(?:the|my|our|a|an)\s*$", "", text[:stated], flags=re.I)  # "I think the | answer is B"
    return "answer_prefixed" if len(lead.split()) <= 3 and not _REASONING.search(lead) else "cot"
