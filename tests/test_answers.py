"""Tests for answers.py: the multiple-choice answer parser on tables of realistic responses and
on 5,222 graded real ones, and the response categories.

    python -m pytest -q tests/test_answers.py
"""
import gzip
import json
import os
from collections import Counter

import pytest

from answers import asks_exception, parse_choice, parse_choice_rule, response_category

# ----------------------------------------------------------------- parse_choice table
O4 = {"A": "X-ray", "B": "Magnetic resonance imaging", "C": "Computed tomography", "D": "Ultrasound"}
OM = {"A": "Mass", "B": "Mass effect", "C": "Edema", "D": "None of the above"}
OYN = {"A": "Yes", "B": "No"}
OLR = {"A": "Left", "B": "Right", "C": "Both sides", "D": "Neither side"}
OBOTH = {"A": "Pneumonia", "B": "Pleural effusion", "C": "Both A and B", "D": "Neither A nor B"}
O6 = {"A": "Cardiology", "B": "Dermatology", "C": "Neurology", "D": "Oncology", "E": "Pathology", "F": "Radiology"}
PARSE_CASES = [
    # bare letters, decorations, case
    ("B", O4, "B"), ("b", O4, "B"), ("(C)", O4, "C"), ("**D**", O4, "D"), ("D.", O4, "D"),
    (" A ", O4, "A"), ("A", O4, "A"), ("a", O4, "A"), ("[B]", O4, "B"), ("'C'", O4, "C"),
    ("F", O6, "F"), ("E.", O6, "E"), ("G", O6, None), ("E", O4, None),
    # letter plus option text
    ("B. Magnetic resonance imaging", O4, "B"), ("C) Computed tomography", O4, "C"),
    ("(D) Ultrasound", O4, "D"), ("b. magnetic resonance imaging", O4, "B"),
    ("A: X-ray", O4, "A"), ("D - Ultrasound", O4, "D"),
    # answer-prefixed
    ("Answer: B", O4, "B"), ("The answer is C.", O4, "C"), ("The correct answer is (D).", O4, "D"),
    ("Final answer: **A**", O4, "A"), ("answer: c", O4, "C"), ("The answer is option B.", O4, "B"),
    ("**Answer:** D", O4, "D"), ("The best answer is A, X-ray.", O4, "A"), ("I would choose C.", O4, "C"),
    ("The answer is a", O4, "A"), ("The answer is: b", O4, "B"), ("The correct option is D", O4, "D"),
    ("I'd go with B", O4, "B"), ("Option C is correct.", O4, "C"), ("C is the correct answer.", O4, "C"),
    # option text only
    ("Ultrasound", O4, "D"), ("computed tomography.", O4, "C"), ("It is an ultrasound image.", O4, "D"),
    ("The answer is ultrasound.", O4, "D"), ("This is a magnetic resonance imaging scan of the brain.", O4, "B"),
    # option text then a letter: the letter must agree, else the letter decides (as VLMEvalKit's rule)
    ("Answer: Ultrasound (D)", O4, "D"), ("The answer is ultrasound, option D.", O4, "D"),
    ("Answer: Ultrasound A", O4, "A"), ("The answer is ultrasound, option B.", O4, "B"),
    ("The answer is ultrasound. A is wrong.", O4, "D"), ("Answer: ultrasound (b)", O4, "B"),
    # the article A
    ("A lesion is seen in the right lobe on computed tomography.", O4, "C"),
    ("A computed tomography scan of the abdomen.", O4, "C"),
    ("A mass is present in the left hemisphere.", OLR, "A"),
    ("A small effusion is seen; the answer is B.", O4, "B"),
    ("The answer is a mass.", OM, "A"),
    ("A 45-year-old patient; the image is an ultrasound.", O4, "D"),
    # options containing one another
    ("Mass effect", OM, "B"), ("There is significant mass effect on the ventricles.", OM, "B"),
    ("A mass", OM, "A"), ("There is a mass in the liver.", OM, "A"),
    ("There is a mass with surrounding edema.", OM, None), ("None of the above", OM, "D"),
    ("Both A and B", OBOTH, "C"), ("The answer is both A and B.", OBOTH, "C"),
    ("Neither A nor B", OBOTH, "D"), ("C. Both A and B", OBOTH, "C"),
    ("Both sides", OLR, "C"), ("The lesion is on the right.", OLR, "B"),
    # chain of thought
    ("The image shows bright signal in the brain parenchyma with excellent soft tissue contrast, typical of MRI. "
     "X-ray (A) and CT (C) show bone better, ultrasound (D) is not used for the adult brain. "
     "<answer>B</answer>", O4, "B"),
    ("Let's analyze each option. A: X-ray would show bones. B: MRI offers soft tissue detail. C: CT shows "
     "density differences. D: Ultrasound is operator dependent. The image shows Hounsfield-like densities, "
     "so the answer is C.", O4, "C"),
    ("Option A is incorrect because there is no bone detail. Option B is incorrect as well. "
     "Option C is correct since this is a cross-sectional density image.", O4, "C"),
    ("A: incorrect. B: incorrect. C: correct. D: incorrect.", O4, "C"),
    ("Step 1: identify the modality. Step 2: the image has grayscale density typical of CT.\n<answer>C</answer>",
     O4, "C"),
    ("First, the image is cross-sectional. It is not an X-ray. Therefore, C.", O4, "C"),
    ("The answer is A. Wait, looking again at the soft tissue contrast, the answer is B.", O4, "B"),
    ("The findings suggest B rather than A.", O4, "B"),
    ("It is not A.", O4, None), ("It is not A; it is D.", O4, "D"),
    ("Not B, it's C", O4, "C"), ("B is unlikely; D fits best. D", O4, "D"),
    ("<answer>Ultrasound</answer>", O4, "D"), ("<answer>(b)</answer>", O4, "B"),
    ("Reasoning about the options...\n<answer>D", O4, "D"), ("<answer></answer> I think it's A.", O4, "A"),
    ("I considered A and B, and B is the answer.", O4, "B"),
    ("Between options A and C, I cannot decide.", O4, None),
    # several letters or nothing
    ("A or B", O4, None), ("A, B", O4, None), ("The options A, B, C and D are all plausible.", O4, None),
    ("I cannot determine the answer from this image.", O4, None), ("", O4, None), ("   ", O4, None),
    ("Sorry, I can't help with that.", O4, None), ("The image is unclear.", O4, None),
    ("X-ray or ultrasound", O4, None),
    # yes / no options
    ("Yes", OYN, "A"), ("no", OYN, "B"), ("No, there is no pneumothorax.", OYN, "B"),
    ("Yes, the lesion is present.", OYN, "A"), ("B. No", OYN, "B"),
    # names that are not options
    ("Consistent with hepatitis B infection.", {"A": "Cirrhosis", "B": "Fatty liver"}, None),
    ("Panel A shows computed tomography.", O4, "C"), ("This is a type B dissection; answer: A", O4, "A"),
    ("e.g. an ultrasound", O4, "D"), ("B-cell lymphoma", {"A": "Lymphoma", "B": "Carcinoma"}, "A"),
    ("I think the answer is D", O4, "D"), ("I think it's D.", O4, "D"),
    ("My answer: (a)", O4, "A"), ("answer is (E)", O6, "E"), ("The most likely answer is F.", O6, "F"),
    ("A is correct.", O4, "A"), ("B is incorrect, A is correct", O4, "A"), ("Answer: A lesion", O4, None),
    ("A X-ray of the chest", O4, "A"), ("option a is correct", O4, "A"), ("I think A fits", O4, "A"),
    ("The answer is A because the bones are bright.", O4, "A"), ("x-ray is the answer", O4, "A"),
    ("A: left lung, B: right lung", {"A": "Left lung", "B": "Right lung"}, None), ("C is right.", O4, "C"),
    ("B is the best answer here", O4, "B"), ("D: correct", O4, "D"),
    ("The answer is a mass.", {"A": "Edema", "B": "Mass"}, "B"), ("**C. Computed tomography**", O4, "C"),
    ("Answer: C\n\nExplanation: the image is an axial slice; X-ray (A) would not show this.", O4, "C"),
    ("The image could be either CT or MRI.", {"A": "CT", "B": "MRI"}, None), ("**", {"A": "", "B": "x"}, None),
    # typical instruction-tuned model outputs
    ("The correct answer is C: Computed tomography.", O4, "C"),
    ("C. Computed tomography\n\nThe image shows an axial slice with bone and soft tissue windows.", O4, "C"),
    ("Based on the image, the answer is **B. Magnetic resonance imaging**.", O4, "B"),
    ("The image appears to be a chest X-ray, so the answer is A.", O4, "A"),
    ("Option D", O4, "D"), ("D) Ultrasound is the modality shown.", O4, "D"),
    ("The image is an ultrasound, not a CT or MRI.", {"A": "CT", "B": "MRI", "C": "Ultrasound"}, "C"),
    ("Correct option: (b)", O4, "B"), ("ANSWER: C", O4, "C"), ("Not A or B; it is D.", O4, "D"),
    ("Not sure, but B.", O4, "B"),
]


def test_parse_table_is_large_and_covers_invalid_answers():
    assert len(PARSE_CASES) >= 80
    assert sum(e is None for _, _, e in PARSE_CASES) >= 15


@pytest.mark.parametrize("response,options,expected", PARSE_CASES, ids=[c[0][:40] or "empty" for c in PARSE_CASES])
def test_parse_choice(response, options, expected):
    assert parse_choice(response, options) == expected


# Failure kinds seen in real chain-of-thought answers: V, virus options; L, options whose texts
# are the figure's labels; X, labels that differ from the option letters; R, "Region X" labels.
V = {"A": "Coronavirus", "B": "Rhinovirus", "C": "Adenovirus", "D": "Influenza virus", "E": "RSV"}
L = {"A": "A", "B": "B", "C": "C", "D": "D"}
X = {"A": "B", "B": "C", "C": "A", "D": "D"}
R = {"A": "Region A", "B": "Region B", "C": "Region C", "D": "Region D"}
REAL_RESPONSE_CASES = [
    # (a) a concluding choice with its letter, then a sentence listing the other options' letters
    ("Fever and anosmia point to a viral cause. The most likely etiology is (A) coronavirus. The other viruses "
     "listed (B, C, D, and E) do not typically cause anosmia.", V, "A"),
    ("The most likely diagnosis is A. The other options (B, C, D, E) are less consistent with anosmia.", V, "A"),
    ("Coronavirus (A) explains the anosmia. The others, B, C, D and E, rarely do.", V, "A"),
    ("Anosmia is typical of (A) coronavirus; options B, C, D and E are less likely.", V, "A"),
    ("The correct diagnosis would be B, rhinovirus; A, C, D and E do not fit the season.", V, "B"),
    ("A fits the anosmia best. Other choices (B-E) are unlikely.", V, "A"),
    # (b) the choice named by its option text while the other options are dismissed
    ("The findings are characteristic of coronavirus infection, which contrasts with the other options.", V, "A"),
    ("Coronavirus best explains the loss of smell; the other options are less likely.", V, "A"),
    ("The picture is typical of coronavirus. Rhinovirus and adenovirus are not typically associated with these CT "
     "findings.", V, "A"),
    ("This is most consistent with coronavirus, whereas rhinovirus, adenovirus, influenza virus and RSV do not "
     "usually produce these findings.", V, "A"),
    ("Influenza virus fits the outbreak; coronavirus and RSV don't match the timeline.", V, "D"),
    ("Rhinovirus is the usual cause of a common cold, while adenovirus is less typical here.", V, "B"),
    # still strict: several options left open stay invalid
    ("Coronavirus or rhinovirus could both explain this.", V, None),
    ("A and B are both possible.", V, None),
    ("The answer is A or B.", V, None),
    ("It could be coronavirus, rhinovirus or adenovirus.", V, None),
    # (c) option texts that are themselves letters labelling parts of a figure
    ("The lesion is in the area labelled B in the figure.", L, "B"),
    ("The arrow points to part C of the figure.", L, "C"),
    ("Region D shows the infarct.", L, "D"),
    ("The left ventricle is the structure labelled C.", X, "B"),
    ("The lesion is labelled A.", X, "C"),
    ("The answer is C.", X, "C"),
    ("<answer>A</answer>", X, "A"),
    ("The highlighted structure corresponds to Region C.", R, "C"),
    ("Region C, because the arrow points to it.", R, "C"),
    ("The structure marked B is the aorta, not region D.", R, "B"),
    # ... where the article "a" is no label (graded: heldout5, heldout16)
    ("Let's think step by step like a medical expert. The masseter closes the jaw.", L, None),
    ("A desmosome is a type of cell junction; it would be in the location with the most of them.", L, None),
    ("The muscle that opens the jaw is a lateral pterygoid, labelled D.", L, "D"),
    # ... while a capital letter that names (vitamin A, lead I, blood group O) is an option's text
    ("Night blindness is caused by deficiency of vitamin A.", {"A": "A", "B": "B", "C": "C", "D": "E"}, "A"),
    ("Blood group A is associated with gastric carcinoma.", {"A": "A", "B": "B", "C": "AB", "D": "O"}, "A"),
    ("Gastric carcinoma is more common in blood group A, peptic ulcer in group O.",
     {"A": "A", "B": "B", "C": "AB", "D": "O"}, None),
    ("The olfactory nerve, cranial nerve I, is torn at the cribriform plate. This causes anosmia.",
     dict(zip("ABCDEFGHIJ", ["II", "I", "III", "IV", "V", "VI", "VII", "VIII", "X", "IX"])), "B"),
    ("I'd say the facial nerve, cranial nerve VII.",
     dict(zip("ABCDEFGHIJ", ["II", "I", "III", "IV", "V", "VI", "VII", "VIII", "X", "IX"])), "G"),
    ("Looking at the ECG, I would pick lead II.", {"A": "I", "B": "II", "C": "III", "D": "aVF"}, "B"),
    # ... and an option's letter stays that option's, though another option's text is that letter
    ("Option D.", {"A": "A", "B": "D", "C": "E", "D": "K"}, "D"),
    ("Vitamin K is needed for the clotting factors. So D.", {"A": "A", "B": "D", "C": "E", "D": "K"}, "D"),
    ("So C.", {"A": "C", "B": "B", "C": "D", "D": "A", "E": "E"}, "C"),
    # ... unless words before it name the text: a clause, a short name, or the option's own letter
    ("Her blood group is B.", {"A": "O", "B": "A", "C": "B", "D": "AB"}, "C"),
    ("Option C (B).", {"A": "O", "B": "A", "C": "B", "D": "AB"}, "C"),
    ("Hep A is spread feco-orally.", {"A": "B", "B": "C", "C": "E", "D": "A"}, "D"),
    ("CN I is the olfactory nerve, which is damaged here.",
     dict(zip("ABCDEFGHIJ", ["II", "I", "III", "IV", "V", "VI", "VII", "VIII", "X", "IX"])), "B"),
    ("The bleeding comes from a deficiency of vitamin k.", {"A": "D", "B": "K", "C": "A", "D": "E"}, "B"),
    # ... and a naming word names only what stands right after it
    ("Wrist drop indicates injury to the radial nerve.\n\nB",
     {"A": "Flexor carpi radialis", "B": "Extensor carpi radialis longus", "C": "Pronator teres", "D": "Supinator"},
     "B"),
]


@pytest.mark.parametrize("response,options,expected", REAL_RESPONSE_CASES,
                         ids=[c[0][:40] for c in REAL_RESPONSE_CASES])
def test_parse_choice_on_real_response_shapes(response, options, expected):
    assert parse_choice(response, options) == expected


# Shapes of the graded chain-of-thought responses (tests/data/graded_cot.jsonl.gz), each in
# several phrasings: S, a next-step question; N, a diagnosis question; T, options with a number.
S = {"A": "Measure serum electrolytes", "B": "Perform abdominal ultrasound", "C": "Repeat urine culture",
     "D": "Perform MRI of the pelvis"}
N = {"A": "Ash leaf spot", "B": "Pituitary adenoma", "C": "Neurofibromas", "D": "Crohn’s disease"}
T = {"A": "1", "B": "2", "C": "4", "D": "Too little information to tell"}
GRADED_SHAPE_CASES = [
    # a concluding cue followed by an option in other words (plural, 'to', articles, an extra word)
    ("The most likely finding in this patient on physical examination is a neurofibroma.", N, "C"),
    ("The most appropriate next step in diagnosis would be to measure the patient's serum electrolytes.", S, "A"),
    ("The next step in management would be to repeat the urine culture to confirm the cure.", S, "C"),
    ("In this case, the most appropriate next step in management would be to order an MRI of the pelvis.", S, "D"),
    ("The most likely diagnosis in this patient is Crohn's disease.", N, "D"),
    ("This leaves us with pituitary adenoma, which fits the headaches.", N, "B"),
    # ... but not a negated option, one that matches no option, or one that matches two alike
    ("The most appropriate next step is not to repeat the urine culture.", S, None),
    ("The most likely predisposing factor is a viral infection.", N, None),
    ("The most appropriate next step would be to perform an imaging study.", S, None),
    # an option-by-option review: letter headings, numbered texts, a verdict on the next line
    ("A) Ash leaf spot: This is not the correct answer because it belongs to tuberous sclerosis.\n"
     "B) Pituitary adenoma: This is not the correct answer.\nC) Neurofibromas: This is the correct answer.\n"
     "D) Crohn's disease: This is not the correct answer.", N, "C"),
    ("1) Ash leaf spot: This is not a likely finding.\n2) Neurofibromas: This is a likely finding, because the "
     "syndrome includes them.\n3) Pituitary adenoma: This is not a likely finding.", N, "C"),
    ("Option A: Measure serum electrolytes\nThis is correct. The vomiting explains it.\n"
     "Option B: Perform abdominal ultrasound\nThis is incorrect.", S, "A"),
    ("Option D is least likely.\nOption B is less likely.\nOption A is more likely because of the spots.\n"
     "Option C is most likely because the family history fits.", N, "C"),
    ("Option C, Neurofibromas, is the most likely.\nOption B, Pituitary adenoma, is the least likely.", N, "C"),
    # every option reviewed and all but one rejected, the last without a word of praise
    ("Option A: Measure serum electrolytes. This is not indicated.\nOption B: Perform abdominal ultrasound. "
     "This is not indicated.\nOption C: Repeat urine culture. This is not indicated.\n"
     "Option D: Perform MRI of the pelvis. This is a relative indication here.", S, "D"),
    # a review that praises two options alike, or describes one ("likely to"), settles nothing
    ("A) Ash leaf spot: This is a likely finding.\nB) Pituitary adenoma: This is also a likely finding.\n"
     "D) Crohn's disease: This is not a likely finding.", N, None),
    ("A) Ash leaf spot: This is also a possibility. However, it is more likely to occur in infants.\n"
     "B) Pituitary adenoma: This is unlikely.", N, None),
    # several committed letters stay invalid; a temperature's unit is not option C
    ("The answer is A, B, and C.", S, None),
    ("The answer is B, C or D.", S, None),
    ("Her temperature is 38.1°C (100.6°F), so the answer is A.", S, "A"),
    ("Temperature 36.7°C, pulse 41/min; the airway must be secured first.", S, None),
    ("The CHADS2 score is high. Temperature 38°C.", T, None),
    # a cue's letter labelled with another option's text chooses neither (graded: heldout5, -6,
    # -14, -16); its own text, a new sentence about another option, or a label that is no option's
    # text leave the letter
    ("Therefore, the answer must be D) Crohn's disease.", N, "D"),
    ("Therefore, the answer must be B) Crohn's disease.", N, None),
    ("So the answer is (A): Neurofibromas.", N, None),
    ("The correct answer is B - Ash leaf spots.", N, None),
    ("The answer is B. Crohn's disease is unrelated to this syndrome.", N, "B"),
    ("The answer is C) a neurocutaneous tumour.", N, "C"),
]


PPH = {"A": "Oxytocin", "B": "Carboprost", "C": "Misoprostol", "D": "Tranexamic acid"}
MEN = {"A": "Vancomycin", "B": "Ceftriaxone", "C": "Vancomycin and ceftriaxone",
       "D": "Vancomycin, ceftriaxone, and ampicillin"}


@pytest.mark.parametrize("response,options,expected", [
    # the letter's own text, written out, is its label even where it holds a comma or another text
    ("The answer is D) Vancomycin, ceftriaxone, and ampicillin.", MEN, "D"),
    ("The answer is C) Vancomycin and ceftriaxone.", MEN, "C"),
    ("The answer is B) Polyps.", {"A": "Polyp", "B": "Polyps", "C": "Cyst", "D": "Mass"}, "B"),
    ("The answer is A) -0.8", {"A": "-0.8", "B": "-0.2", "C": "0.2", "D": "0.8"}, "A"),
    # another option's text as the label: no choice, however the label is set off
    ("The answer is D) Misoprostol.", PPH, None),
    ("**Answer: D) Misoprostol**", PPH, None),
    ("Answer: (D) - Misoprostol", PPH, None),
    ("The answer is D: Misoprostol (the prostaglandin)", PPH, None),
    ("**Answer: D — Misoprostol**", PPH, None),
    ("The answer is D: “Misoprostol”.", PPH, None),
    # ... but an explanation after the letter, or a new line, labels nothing
    ("The answer is B: oxytocin, misoprostol and tranexamic acid have failed, so carboprost is next.", PPH, "B"),
    ("The answer is B - oxytocin (A) has already failed and she has no asthma.", PPH, "B"),
    ("**Answer: B**\n\n- Oxytocin: already given.\n- Carboprost: next.", PPH, "B"),
])
def test_a_letter_labelled_with_another_options_text_chooses_neither(response, options, expected):
    assert parse_choice(response, options) == expected


@pytest.mark.parametrize("response,options,expected", GRADED_SHAPE_CASES,
                         ids=[c[0][:40] for c in GRADED_SHAPE_CASES])
def test_parse_choice_on_graded_response_shapes(response, options, expected):
    assert parse_choice(response, options) == expected


# Reasoning that concludes in prose, without an answer phrase (the InstructGPT responses of the
# graded file): R, a rash; G, an organism; P, a nerve; H, a hepatitis; DEF, a defence mechanism;
# VAC, a contraindication; CY, an ovarian cyst; CE, intestinal cells; WK, weeks of pregnancy; SCR, a
# screening test; EYE, a squint test; MK, a cardiac marker.
R = {"A": "Roseola", "B": "Erythema infectiosum", "C": "Rubella", "D": "Kawasaki disease"}
G = {"A": "Gram-negative, oxidase-positive rods", "B": "Gram-positive cocci",
     "C": "Gram-positive, gamma-hemolytic cocci", "D": "Gram-negative, oxidase-negative rods"}
P = {"A": "Greater petrosal nerve", "B": "Lesser petrosal nerve", "C": "Chorda tympani", "D": "Trigeminal"}
H = {"A": "Hepatitis A", "B": "Hepatitis B", "C": "Hepatitis D", "D": "Hepatitis E"}
DEF = {"A": "Displacement", "B": "Acting out", "C": "Passive aggression", "D": "Blocking"}
VAC = {"A": "Egg protein allergy", "B": "Fever after a previous vaccination",
       "C": "Current upper respiratory tract infection", "D": "Uncontrolled seizure disorder"}
CY = {"A": "Follicular cyst", "B": "Endometrioma", "C": "Corpus luteum cyst", "D": "Dermoid cyst"}
CE = {"A": "Chief cells", "B": "Goblet cells", "C": "Paneth cells", "D": "Parietal cells"}
WK = {"A": "Last 5 days", "B": "12-16 week", "C": "8-12 week", "D": "16-20 week"}
SCR = {"A": "Highly sensitive test", "B": "Low false positive rate", "C": "High true positive rate",
       "D": "Low negative predictive value"}
EYE = {"A": "Forced duction test", "B": "Cover Uncover Test", "C": "Fundus Examination", "D": "All of the above"}
MK = {"A": "LDH", "B": "CPK-MB", "C": "Troponin T", "D": "Troponin I"}
PROSE_CONCLUSION_CASES = [
    # the last line concludes on one option, by its text or most of its words after 'is'
    ("Roseola fits the age, and rubella fits the rash.\n\nTherefore, the child has rubella.", R, "C"),
    ("Roseola fits the age, and rubella fits the rash.\n\nIn conclusion, the rash and the age point to "
     "erythema infectiosum.", R, "B"),
    ("Hepatitis A has the lowest mortality, while hepatitis E has the highest. Therefore, her prognosis is "
     "worst with hepatitis E.", H, "D"),
    ("The urine smells of ammonia.\n\nBased on this, the organism on the culture is a gram-negative, "
     "oxidase-positive rod.", G, "A"),
    ("Smell is carried by the olfactory nerve; the chorda tympani carries taste.\n3. Therefore, the nerve "
     "that is not involved in smell is the trigeminal nerve.", P, "D"),
    ("The most appropriate next step in management would be to remove the graft.",
     {"A": "Intravenous immunoglobulin", "B": "Methylprednisolone", "C": "Removal of graft"}, "C"),
    # ... or by a short clause whose words all belong to that option alone
    ("The alkaline phosphatase is high.\n\nTherefore, the most probable diagnosis is choledocholithiasis.",
     {"A": "Jaundice due to choledocholithiasis", "B": "Dubin-Johnson syndrome", "C": "Viral hepatitis"}, "A"),
    ("Therefore, the most probable diagnosis is jaundice.",
     {"A": "Jaundice due to choledocholithiasis", "B": "Malignant obstructive jaundice"}, None),
    # 'the right foot is' is a side, not a committing 'right'
    ("The pain in the right foot is caused by the bone spur. The heel is also tender.",
     {"A": "The central fascicle is the thinnest", "B": "The windlass mechanism remains intact",
      "C": "Strain of the medial fascicle", "D": "Pain caused by a bone spur"}, None),
    # a last line that answers the question on the line before
    ("Roseola: 0.2\nRubella: 0.5\n\nWhat is the most likely diagnosis?\n\nRubella", R, "C"),
    # British and American spellings, numbers in words
    ("Fetal fibronectin in the discharge is a marker for it.\n\nSo, the probable diagnosis is preterm labor.",
     {"A": "Preterm labour", "B": "IUGR", "C": "Antepartum haemorrhage", "D": "Cervical infection"}, "A"),
    ("The bleeding comes before delivery.\n\nTherefore, the most likely diagnosis is antepartum hemorrhage.",
     {"A": "Preterm labour", "B": "IUGR", "C": "Antepartum haemorrhage", "D": "Cervical infection"}, "C"),
    ("Incisors form from four lobes.\n\nSo the minimum number of lobes required to form a permanent tooth is two.",
     {"A": "1", "B": "2", "C": "3", "D": "4"}, "B"),
    ("Incisors form from four lobes.\n\nSo the minimum number of lobes is two or three.",
     {"A": "1", "B": "2", "C": "3", "D": "4"}, None),
    # an 'or' before the verb belongs to the subject; after it, it hedges (below: 'or a drug reaction')
    ("A current upper respiratory tract infection is no contraindication.\n\nIn conclusion, the contraindication "
     "for giving one or more vaccines today is his uncontrolled seizure disorder.", VAC, "D"),
    ("An uncontrolled seizure disorder calls for care.\n\nTherefore, the reason to delay one or more of the "
     "vaccines is an egg protein allergy.", VAC, "A"),
    ("A current upper respiratory tract infection is no contraindication.\n\nTherefore, the contraindication to "
     "one or more vaccines is an egg protein allergy or a recent fever.", VAC, None),
    # a concluding sentence may name its option in the plural ...
    ("Follicular cysts are not vascular.\n\nEndometriomas are the most likely because they explain the "
     "echogenic walls.", CY, "B"),
    ("A dermoid cyst holds fat, and a corpus luteum cyst bleeds.\n\nTherefore, endometriomas are the best "
     "explanation of the echogenic walls.", CY, "B"),
    # ... though elsewhere a plural is no mention of the option: the one option named stands
    ("Macrophages engulf the pathogen.\n\nThe dendritic cell then presents the antigen to the naive T cell.",
     {"A": "NK cell", "B": "Dendritic cell", "C": "Macrophage"}, "B"),
    # a word and its noun share their stem ('sensitivity', 'Highly sensitive test'); a hyphen
    # between words reads as a space ('cover-uncover test', 'semi-erect')
    ("The goal is to pick up as many cases as possible.\n\nThe most important characteristic of the test is "
     "its sensitivity.", SCR, "A"),
    ("Screening must miss no case.\n\nSo what matters most here is sensitivity.", SCR, "A"),
    ("The forced duction test looks for restriction.\n\nSo the cover-uncover test would be the most "
     "appropriate test to do.", EYE, "B"),
    ("Supine worsens the breathing, and erect tires the child.\n\nIn conclusion, the best position is the "
     "semi-erect position.", {"A": "Supine", "B": "Semi erect", "C": "Erect", "D": "Trendelenburg"}, "B"),
    # 'more likely' concludes as 'most likely' does; 'more likely to' describes
    ("Goblet cells line the villi and Paneth cells sit in the crypts.\n\nGiven the site, it is more likely "
     "that the cells are chief cells, since they lie at the top.", CE, "A"),
    ("Goblet cells line the villi and Paneth cells sit in the crypts.\n\nChief cells are more likely to "
     "divide at the top.", CE, None),
    ("Each tooth forms from lobes.\n\nTherefore, the answer is one of the four.",
     {"A": "1", "B": "2", "C": "3", "D": "4"}, None),
    # ... but not the last item of a review, a rejection, a disjunction, a cut-off response, a
    # conclusion that names no option
    ("A) Roseola\n\nThe rash follows the fever. This is most likely rubella.\n\nC) Rubella\n\nThe rash "
     "starts on the face. This is most likely roseola.", R, None),
    ("Roseola gives a high fever first, so that's not it.\n\nErythema infectiosum gives slapped cheeks, so "
     "that's not it.", R, None),
    ("Rubella fits the rash, and so does erythema infectiosum.\n\nIn conclusion, the rash is caused by "
     "roseola or a drug reaction.", R, None),
    ("1) Roseola: This is a common viral illness of infants, with a high fever before the rash appears on "
     "the trunk and spreads to the neck and the face.\n\n2) Erythema", R, None),
    ("Roseola is rare at this age.\n\nTaking all of this into account, the most likely diagnosis is "
     "measles.", R, None),
    ("The first arch gives rise to the jaw.\n\nThe thyroid gland is in the neck, so we can eliminate the "
     "fifth and sixth branchial arches.", {"A": "First branchial arch", "D": "Sixth branchial arch"}, None),
    # letters and option texts inside a probability are events, and a hypothesis is no choice
    ("P(A|I) = P(I|A)P(A)/P(I) = 0.2", R, None),
    ("P(D) = P(D|I)P(I) + P(D|~I)P(~I)", R, None),
    ("P(Roseola|D) = P(D|Roseola)P(Roseola)/P(D) = 0.1", R, None),
    ("If roseola is the correct answer, the fever came first; rubella fits the rash as well.", R, None),
    # an option's text before a committing phrase; two options left by elimination are no choice
    ("This leaves us with the greater petrosal nerve and the lesser petrosal nerve. The otic ganglion lies "
     "by the parotid gland, so the lesser petrosal nerve is the most likely answer.", P, "B"),
    ("This leaves us with roseola and erythema infectiosum.", R, None),
    # ... even when a line after it leans to one: two left stay two (a reader may take the lean; the
    # rules leave it to the judge, as they do "... A biopsy would be the best way to confirm roseola.")
    ("That leaves the 8-12 week and 16-20 week ranges as the most likely. However, the 8-12 week range is "
     "more likely, because the organs are still forming.", WK, None),
    ("This leaves us with roseola and rubella. A biopsy would be the best way to confirm roseola.", R, None),
    ("So we can eliminate answer choice A.\n\nThis leaves us with answer choice C, which is correct.", R, "C"),
    ("This leaves us with roseola and erythema infectiosum. Roseola is more common in infants, so this is "
     "the most likely diagnosis.", R, "A"),
    ("Option A) Roseola\nOption B) Erythema infectiosum\nOption C) Rubella\nOption D) Kawasaki disease\n\n"
     "Option B) Erythema infectiosum is the correct answer.", R, "B"),
    # 'answer choice (A)' names an option, it does not choose it
    ("The first answer choice (A) is about the age; the second answer choice (B) is about the rash. We "
     "need more information.", R, None),
    # reviews: a verdict below a blank line, a hedge that is not a best, 'not demonstrating'
    ("Option A: Measure serum electrolytes\n\nThis is incorrect.\n\nOption C: Repeat urine culture\n\n"
     "This is correct.", S, "C"),
    ("C) Repeat urine culture: This could also be a correct answer.\n\nD) Perform MRI of the pelvis: This is "
     "the most likely correct answer.", S, "D"),
    ("He is not demonstrating displacement, since the target is the same.\n\nHe is demonstrating passive "
     "aggression because he is indirectly hostile.\n\nHe is not demonstrating acting out or blocking.", DEF, "C"),
    # a ranking chooses its first place: "the second / third / next most likely" are its runners-up
    ("The most likely answer is troponin I. It peaks early.\n\nThe second most likely answer is troponin T.\n\n"
     "The third most likely answer is CPK-MB.", MK, "D"),
    ("1) The most likely marker is troponin I.\n2) The next most likely marker is troponin T.\n3) The third most "
     "likely marker is CPK-MB.\n4) The fourth most likely marker is LDH.", MK, "D"),
    ("1) The marker that appears last in myocardial infarction is most likely LDH.\n2) The second most likely "
     "is CPK-MB.", MK, "A"),
    ("The most appropriate marker to measure here is LDH.\n\nThe second most appropriate marker is CPK-MB.", MK, "A"),
    ("The best answer is B, the second best answer is C.", MK, "B"),
    ("The 2nd most likely answer is C. The most likely answer is D.", MK, "D"),
    ("The best answer is A. The second-best answer is C.", MK, "A"),
    ("The best answer is D, since it rises first. The next best answer is C.", MK, "D"),
    # ... but "the next best step" and "the next most appropriate step" are the best next step: the
    # choice; a choice described as a runner-up is still the choice; an ordinal on another line is
    # no rank
    ("The next best step is to measure troponin T.", MK, "C"),
    ("An ECG is done.\n\nThe next most appropriate step in management is to measure troponin T.", MK, "C"),
    ("An ECG is normal. The next most important step is to measure troponin T.", MK, "C"),
    ("LDH (A) rises too late and CPK-MB (B) is not specific. The next best option is C.", MK, "C"),
    ("Troponin I is the most specific marker, but it stays high for days. Therefore, the marker here is "
     "CPK-MB, the second most useful marker of reinfarction.", MK, "B"),
    ("- LDH: rises late, peaks second\n\nFinal answer: D", MK, "D"),
]


RANKING = ("1) The most useful marker is troponin I.\n2) The second most useful marker is troponin T.\n"
           "3) The fourth most useful marker is LDH.")
SECOND = "The most useful marker is troponin I.\n\nThe second most useful marker is troponin T."


@pytest.mark.parametrize("question,response,expected", [
    ("Which marker rises last after a myocardial infarction?", RANKING, "D"),
    ("Which marker is least useful after a myocardial infarction?", RANKING, "A"),
    ("Which is the second most useful marker after a myocardial infarction?", SECOND, "C"),
    # a case report's "at least" asks for no rank: only the question's last sentence is read
    ("He has had chest pain for at least 3 hours. Which marker is most useful?", SECOND, "D"),
])
def test_a_ranking_answers_the_question_it_was_asked(question, response, expected):
    """A ranking's first place is the choice, unless the question asks for a runner-up or the least:
    then the ranking is read as it stands (the place it ends on)."""
    assert parse_choice(response, MK, question) == expected


@pytest.mark.parametrize("response,options,expected", PROSE_CONCLUSION_CASES,
                         ids=[c[0][:40] for c in PROSE_CONCLUSION_CASES])
def test_parse_choice_on_prose_conclusions(response, options, expected):
    assert parse_choice(response, options) == expected


# A last sentence that states an option as what its subject is, with no concluding word: CH, a
# CHADS2 score; PD, a mechanism; AN, two anaesthetics; DOSE, steroid doses; SK, the Koebner
# phenomenon; MG, next steps; BL, bonding after bleaching; FEV, spirometry; EP, ependymal cells.
CH = {"A": "1", "B": "2", "C": "4", "D": "Too little information to tell"}
PD = {"A": "Inhibition of monoamine oxidase B", "B": "Blockade of muscarinic receptors",
      "C": "Inhibition of dopamine reuptake", "D": "Increased dopamine synthesis"}
AN = {"A": "More blood soluble and faster induction of anesthesia", "B": "More potent and slower recovery",
      "C": "More lipid-soluble and faster recovery", "D": "Less potent and faster induction of anesthesia"}
DOSE = {"A": "12 mg 12 hourly 2 doses", "B": "12 mg 24 hourly 4 doses", "C": "6 mg 24 hourly 2 doses",
        "D": "6 mg 12 hourly 4 doses"}
SK = {"A": "Impetigo", "B": "Pemphigoid", "C": "Erythema multiforme", "D": "Psoriasis"}
MG = {"A": "Admit and start parenteral nutrition", "B": "Stabilize the fracture with a brace",
      "C": "Switch furosemide to hydrochlorothiazide"}
BL = {"A": "Treat with catalase", "B": "Wait for 7 days is mandatory", "C": "Treat with H2O2 for 3 minutes"}
FEV = {"A": "FEV1: decrease and FVC: decreased", "B": "FEV1: decreased and FVC: no change",
       "C": "FEV1: decreased and FVC: increased", "D": "FEV1: no change and FVC: no change"}
EP = {"A": "Production and circulation of CSF", "B": "Protective membrane surrounding spinal cord",
      "C": "Conduct voluntary muscle action potentials", "D": "Increasing action potential conduction velocity"}
STATED_CASES = [
    # the option's text after the last 'is', with at most three other words, or most of its words
    ("Atrial fibrillation gives 1 point.\nHypertension gives 1 point.\n\nShe has no other risk factor.\n\n"
     "The patient's CHADS2 score is 2.", CH, "B"),
    ("Levodopa is a precursor of dopamine.\n\nThe mechanism of action of the drug is to increase dopamine "
     "synthesis.", PD, "D"),
    # a negation word that belongs to the option ('Less potent', 'no change') negates nothing
    ("Its partition coefficient is lower.\n\nTherefore, the first agent is less potent and has a faster "
     "induction of anesthesia.", AN, "D"),
    ("The most likely diagnosis is sarcoidosis.\n\nThe expected changes in FEV1 and FVC are a decrease in FEV1 "
     "and no change in FVC.", FEV, "B"),
    # 'produce and circulate' shares the stems of 'Production and circulation'
    ("The central canal is lined by ependymal cells.\n\nTheir primary function is to produce and circulate "
     "CSF.", EP, "A"),
    # not a conditional, the last of parallel statements, an addition ('also'), a negation before the
    # verb, or an option named among other words
    ("The dose depends on the gestational age.\n\nIf the fetus is older than 34 weeks, the dose is 6 mg "
     "given every 24 hours for two doses.", DOSE, None),
    ("1) Koebner phenomenon is seen in psoriasis.\n2) Koebner phenomenon is seen in pemphigoid.\n"
     "3) Koebner phenomenon is seen in impetigo.", SK, None),
    # ... unless the sentence before it announces the answer
    ("1) Koebner phenomenon is seen in psoriasis.\n2) It is rare in pemphigoid.\n\nNow, we can answer the "
     "question. The disease with the Koebner phenomenon is psoriasis.", SK, "D"),
    ("Impetigo is an infection.\nPemphigoid is a blistering disease.\n\nLet's put this together and come to a "
     "conclusion. The skin disease in this patient is erythema multiforme.", SK, "C"),
    ("The fracture needs a brace.\n\nShe is also taking furosemide, which we need to switch to "
     "hydrochlorothiazide.", MG, None),
    ("Bleaching leaves oxygen in the enamel.\n\nIt would not be necessary to wait for 7 days before bonding.",
     BL, None),
    ("Atrial fibrillation gives 1 point.\nHypertension gives 1 point.\n\nShe has no other risk factor.\n\n"
     "The CHADS2 score is 2 for this patient with atrial fibrillation.", CH, None),
]


@pytest.mark.parametrize("response,options,expected", STATED_CASES, ids=[c[0][-40:] for c in STATED_CASES])
def test_parse_choice_on_a_last_sentence_that_states_an_option(response, options, expected):
    assert parse_choice(response, options) == expected


# Questions that ask for the exception are answered by the option the response says does not
# hold, read with the question as the evaluation reads it; the same response without the question
# reads differently. X, tumor suppressor genes; V, arteries of the pharyngotympanic tube; E, tests
# in altered sensorium; K, uses of hypertonic saline.
X = {"A": "pRb", "B": "FHIT", "C": "PTCH", "D": "c-erbB1"}
V = {"A": "Ascending pharyngeal", "B": "Ascending palatine", "C": "Middle meningeal artery",
     "D": "Artery of pterygoid canal"}
E = {"A": "Complete blood counts", "B": "Random blood sugar", "C": "Lumbar puncture", "D": "Non-contrast CT head"}
K = {"A": "Prolonged bowel surgery", "B": "Cardiac shock", "C": "Brain injury", "D": "Burn"}
EXCEPTION_CASES = [
    # (response, options, question, parsed with the question, parsed without it)
    ("A) pRb is a tumor suppressor gene.\nB) FHIT is a tumor suppressor gene.\nC) PTCH is a tumor suppressor "
     "gene.\nD) c-erbB1 is not a tumor suppressor gene.", X, "Which of following is not a tumor suppressor gene?",
     "D", None),
    # 'c-erbB1 is ...' opens with its text, not with a heading 'c-'
    ("pRb is a tumor suppressor gene.\n\nFHIT is a tumor suppressor gene.\n\nPTCH is a tumor suppressor gene.\n\n"
     "c-erbB1 is not a tumor suppressor gene.", X, "Which of following is not a tumor suppressor gene?", "D", None),
    ("A) is true, because pRb holds the cell cycle.\nB) is true.\nC) is not true, because PTCH is a tumor "
     "suppressor.\nD) is true.", X, "All of the following are true about these genes except:", "C", "D"),
    ("Complete blood counts and lumbar puncture are both necessary in altered sensorium. However, a "
     "non-contrast CT head is not necessary to diagnose altered sensorium.", E,
     "A patient presents to the emergency with altered sensorium. All of these tests should be done except:",
     "D", None),
    # the option named by most of its words ('the artery of the pterygoid canal')
    ("The middle ear is supplied by the ascending palatine artery. The artery of the pterygoid canal does not "
     "supply the pharyngotympanic tube.", V, "Pharyngotympanic tube is supplied by all except:", "D", "B"),
    # the least preferred one concludes
    ("Brain injury sites are often used. The burn is the least preferred site of all.", K,
     "Which of the following is the least preferred site?", "D", None),
    # two options denied, a negation off the question's topic, a rejection of the answer: no exception
    ("The middle meningeal artery does not supply the tube. The artery of the pterygoid canal does not supply "
     "the tube either.", V, "Pharyngotympanic tube is supplied by all except:", None, None),
    ("A) Prolonged bowel surgery: A hypertonic solution is used.\nB) Cardiac shock: The heart is not able to "
     "pump enough blood, and a hypertonic solution is used.\nC) Brain injury: A hypertonic solution is used.\n"
     "D) Burn: A hypertonic solution is used.", K, "Hypertonic solution is used in all except", None, None),
    ("Option C is not the correct answer. Option D is not the correct answer either.", X,
     "Which is not a tumor suppressor gene?", None, None),
    # a review whose items are 'Text. This is (not) correct.'
    ("Pili is a virulence factor. This is correct.\nIntracellular obligate. This is not correct.\nShow twitching "
     "motility. This is correct.", {"A": "Pili is a virulence factor", "B": "Intracellular obligate",
                                    "C": "Show twitching motility"}, "What is not true about the organism?", "B", "C"),
    # an answer phrase commits in any question
    ("A) pRb: This is a tumor suppressor gene.\nD) c-erbB1: This is the correct answer, as it is an oncogene.",
     X, "Which of following is not a tumor suppressor gene?", "D", "D"),
]


@pytest.mark.parametrize("response,options,question,with_question,without", EXCEPTION_CASES,
                         ids=[c[0][:40] for c in EXCEPTION_CASES])
def test_parse_choice_reads_exception_questions(response, options, question, with_question, without):
    assert parse_choice(response, options, question) == with_question
    assert parse_choice(response, options) == without


@pytest.mark.parametrize("question,expected", [
    ("All of the following are true about grey communicans except:", True),
    ("Which of the following is NOT seen in non immune hydrops?", True),
    ("Which of the following is the least useful for diagnosis of spondylolisthesis?", True),
    ("False about enamel rods is", True),
    ("Not a feature of infective endocarditis:", True),
    ("Gardner syndrome does not include:", True),
    # a case report's negations and a question for a reason ask no exception
    ("He does not smoke. He has not travelled. Which of the following is the most likely diagnosis?", False),
    ("Stress breakers are not used in partial denture construction because:", False),
    ("The false negative rate for the exposed group is", False),
    (None, False),
])
def test_asks_exception(question, expected):
    assert asks_exception(question) is expected


# A committing phrase about the sentence before it, a conclusion after a review, an elimination
# that leaves one option: L, primary and permanent roots.
L = {"A": "Primary roots show less accessory canals", "B": "Primary roots resorb more easily",
     "C": "Primary roots are shorter", "D": "None of the above"}
FOLLOW_UP_CASES = [
    ("The first difference is that primary roots resorb more easily. This cannot be the answer.\n\nThe second "
     "difference is that primary roots are shorter. This is the answer because it contrasts the two.", L, "C"),
    ("Primary roots resorb more easily in molars.\nPrimary roots are shorter in every series, making it the most "
     "likely answer.\nThe crowns are smaller too.", L, "C"),
    ("Primary roots resorb more easily and primary roots are shorter. This is the correct answer.", L, None),
    ("Primary roots are shorter. This is not the correct answer.", L, None),
    # the last line concludes after a review whose last item has its verdict on the same line
    ("A) Primary roots show less accessory canals: This is not the main difference.\nB) Primary roots resorb "
     "more easily: This is not the main difference.\n\nTherefore, the main difference is that primary roots "
     "are shorter.", L, "C"),
    # 'Option C) <its text>' with its verdict below; 'cannot be correct' rejects
    ("Option B) Primary roots resorb more easily\n\nThis cannot be correct.\n\nOption C) Primary roots are "
     "shorter\n\nThis is correct.\n\nOption D) None of the above\n\nThis cannot be correct.", L, "C"),
    ("Based on this, we can eliminate answers A, B, and D. The only remaining answer, C, is correct.", L, "C"),
    # 'most likely to be' and 'most effective' judge; 'A is the most likely because' commits
    ("A) Primary roots show less accessory canals: This is less important.\nC) Primary roots are shorter: This "
     "is the most likely to be the main difference.", L, "C"),
    ("B) Primary roots resorb more easily: This does not hold.\nC) Primary roots are shorter: This would be the "
     "most effective way to tell them apart.", L, "C"),
    ("B is more likely because resorption is faster.\n\nC is the most likely because the roots are shorter.",
     L, "C"),
    ("B is more likely to resorb.\n\nC is the most likely to be shorter in some series.", L, None),
    # 'more likely to be correct' commits as 'the most likely' does; a bare 'more likely' compares
    ("That leaves options B and C.\n\nOption C is more likely to be correct, as the series measured the roots.",
     L, "C"),
    ("That leaves options B and C.\n\nOption C is more likely, because the series measured the roots.", L, None),
    ("We can eliminate A and D. However, option B) is more likely to be correct, as resorption is fast.", L, "B"),
    ("B) Primary roots resorb more easily: This is the next most likely.\nC) Primary roots are shorter: This "
     "is the most likely.", L, "C"),
    ("Primary roots resorb more easily: they are more likely to be lost early.\n\nPrimary roots show less "
     "accessory canals: this is not the main difference.", L, None),
    # 'it's the ... option' and 'the most likely to be correct' commit as 'this is' and 'the most likely' do
    ("The first option is that primary roots resorb more easily. It's possible.\n\nThe second option is that "
     "primary roots are shorter. It's the best answer here.", L, "C"),
    ("The second option is that primary roots resorb more easily. It could fit, but it's not the most likely "
     "option.\n\nThe third option is that primary roots are shorter. This fits the series, and it's the most "
     "likely option.", L, "C"),
    ("Option B is likely to be correct, as resorption is fast.\n\nOption C is the most likely to be correct.",
     L, "C"),
    ("Option D is the least likely to be correct.\n\nOption B is also likely to be correct.\n\nOption C is "
     "the most likely to be correct.", L, "C"),
    # a review cut off before its last item settles nothing
    ("A) Primary roots show less accessory canals: This is not it.\nB) Primary roots resorb more easily: This "
     "is not it.\nC) Primary roots are shorter: This is not it.\nD) None of the above: The roots of", L, None),
]


@pytest.mark.parametrize("response,options,expected", FOLLOW_UP_CASES, ids=[c[0][:40] for c in FOLLOW_UP_CASES])
def test_parse_choice_on_follow_up_phrases(response, options, expected):
    assert parse_choice(response, options) == expected


# Lists, articles and negations around the options: M, kinds of lipid; W, causes of hydrocephalus.
M = {"A": "Simple lipid", "B": "Compound lipid", "C": "Precursor lipid", "D": "Derived lipid"}
W = {"A": "Blood clot", "B": "Aqueductal stenosis", "C": "Arachnoid adhesions", "D": "Mega cisterna magna"}
LIST_AND_NEGATION_CASES = [
    # 'A' before option A's text is the article where 'a' is right, the letter where 'an' would be
    ("A simple lipid has one or two fatty acids. A compound lipid has more. So, a ceramide is a derived lipid.",
     M, "D"),
    # cut off while restating the options: no answer; a restated line that ends the response is one
    ("The scan shows dilated ventricles, and the history gives no hint of trauma or of bleeding, so the cause "
     "must be looked for in the options given, which are as follows:\nA) Blood c", W, None),
    ("All ventricles are dilated, so the block lies below them.\n\nB) Aqueductal stenosis", W, "B"),
    # plural option texts commit with 'are'
    ("Meningitis scars the villi; arachnoid adhesions are the most likely answer because they follow it.\n"
     "Aqueductal stenosis is rare.", W, "C"),
    # 'the most likely cause' commits, 'that X is the cause' after 'not likely' does not
    ("The options are A) Blood clot and B) Aqueductal stenosis.\n\nAqueductal stenosis is the most likely cause "
     "of the findings. A blood clot is rare.", W, "B"),
    ("It is not likely that a blood clot is the cause. It is not likely that arachnoid adhesions are the cause.",
     W, None),
    # option texts that repeat their own letter ('c)\tTo counteract ...', as some MedMCQA options do)
    ("Its job is to counteract the movement of the denture, so this is the correct answer.",
     {"A": "a)\tTo balance the denture", "B": "b)\tTo act as a direct retainer",
      "C": "c)\tTo counteract the movement of the denture"}, "C"),
    # 'is a blood clot, aqueductal stenosis, or ...' lists options after the article 'a'
    ("Therefore, the most likely cause of the hydrocephalus is a blood clot, aqueductal stenosis, or arachnoid "
     "adhesions.", W, None),
    ("Therefore, the most likely cause of the hydrocephalus is a blood clot, given the trauma.", W, "A"),
    # a bare list of the options: the line below its last item judges that item only where it names it
    ("The causes of hydrocephalus include:\n1) Blood clot\n2) Aqueductal stenosis\n3) Arachnoid adhesions\n"
     "4) Mega cisterna magna\n\nFinally, we choose the most likely cause. In this case, the most likely cause "
     "is an infection.", W, None),
    ("The causes include:\n-Blood clot\n-Aqueductal stenosis\n-Arachnoid adhesions\n-Mega cisterna magna\n\n"
     "3. Based on the information above, we can conclude that aqueductal stenosis is the best explanation.",
     W, "B"),
    ("The options are:\nA) Blood clot\nB) Aqueductal stenosis\nC) Arachnoid adhesions\nD) Mega cisterna magna"
     "\n\nMega cisterna magna is the most likely cause, given the cyst.", W, "D"),
    # options set aside together ('eliminate B and C') are all set aside, so the one left stands
    ("We can rule out A and C, since the scan shows no clot or adhesion.\n\nB fits best here.", W, "B"),
    ("We can eliminate answer choices B and D because the ventricles are small. This", W, None),
    ("From this, we can eliminate option B and C. We can also eliminate option D. So the answer", W, None),
    # a cue followed by a negated option or by 'none of the above' commits to nothing
    ("Therefore, option D is not the correct answer.\n\nThe correct answer is none of the above.", W, None),
    ("Mega cisterna magna is a malformation. Therefore, arachnoid adhesions do not block the flow.", W, "D"),
]


@pytest.mark.parametrize("response,options,expected", LIST_AND_NEGATION_CASES,
                         ids=[c[0][:40] for c in LIST_AND_NEGATION_CASES])
def test_parse_choice_on_lists_articles_and_negations(response, options, expected):
    assert parse_choice(response, options) == expected


# Readings a careless rule would get wrong (each one of the shapes above gone too far): a plural
# that is a verb or 'Type I' + 's', 'and' starting a new clause after 'no', a hyphenated compound
# holding an option's words, 'more likely' in a comparison, 'or' next to the option, a refusal
# to answer; a hypothesis; a named letter; a closing question. HS, hypersensitivity types; IO, a
# direction; RX, a reflex; J, joint diseases; LC, lung tumours; SA, chest diseases; LY, Lyme
# drugs; TR, abdominal trauma; PE, acute dyspnea.
HS = {"A": "Type I", "B": "Type II", "C": "Type III", "D": "Type IV"}
IO = {"A": "Increase", "B": "Decrease", "C": "No change"}
RX = {"A": "Present", "B": "Absent", "C": "Exaggerated", "D": "Diminished"}
J = {"A": "Osteoarthritis", "B": "Rheumatoid arthritis", "C": "Gout", "D": "Septic arthritis"}
LC = {"A": "Small cell lung cancer", "B": "Mesothelioma", "C": "Carcinoid tumor", "D": "Metastatic breast cancer"}
SA = {"A": "Sarcoidosis", "B": "Lymphoma", "C": "Lung cancer", "D": "Pneumonia"}
LY = {"A": "Ceftriaxone", "B": "Doxycycline", "C": "Azithromycin", "D": "Amoxicillin"}
TR = {"A": "Exploratory laparotomy", "B": "CT scan of the abdomen with contrast", "C": "Diagnostic peritoneal lavage",
      "D": "Observation"}
PE = {"A": "Pneumonia", "B": "Heart failure", "C": "Pneumothorax", "D": "Pulmonary embolism"}
OVERREACH_CASES = [
    ("Type I is IgE, Type II cytotoxic, Type III immune complex, Type IV delayed.\nTherefore, the reaction type "
     "is Type IV.", HS, "D"),
    ("Potassium could increase or decrease with the drug.\nTherefore, as sodium delivery increases, potassium "
     "will decrease.", IO, "B"),
    ("The reflex could be diminished or absent.\nTherefore, in a patient who presents with a transection, the "
     "reflex is absent.", RX, "B"),
    ("The knee pain is worse with activity. There is no history of trauma and osteoarthritis is the most likely "
     "diagnosis.", J, "A"),
    ("The joint fluid has no crystals and septic arthritis is the most likely diagnosis.", J, "D"),
    ("Mesothelioma and carcinoid tumor do not fit. The keratin pearls point to non-small-cell lung cancer.",
     LC, None),
    ("Sarcoidosis and lymphoma both cause hilar nodes; lung cancer is possible.\nLymphoma would be more likely "
     "if she had night sweats.", SA, None),
    ("Sarcoidosis and lymphoma both cause hilar nodes.\nLung cancer is more likely in smokers. She has never "
     "smoked.", SA, None),
    ("Lymphoma and lung cancer are possible. Pneumonia is also possible.\nTherefore, whether this is "
     "sarcoidosis or a fungal infection is difficult to determine.", SA, None),
    ("Lymphoma and lung cancer are possible.\nThus, it is sarcoidosis or tuberculosis that is most likely.",
     SA, None),
    ("Sarcoidosis and lymphoma are both possible here.\nWe do not have enough information to answer the "
     "question. The biopsy result is lymphoma.", SA, None),
    ("Caseating granulomas argue against sarcoidosis and lymphoma.\nSo the answer is none of the options. "
     "Sarcoidosis is the most common cause of hilar nodes, but the caseation points elsewhere.", SA, None),
    # a hypothesis is no choice, by cue or by letter ('if we look at ...' only leads in)
    ("If the child were younger than 8 years, the best answer would be D. Since he is 12, the drug of choice "
     "is doxycycline.", LY, "B"),
    ("The decision depends on his hemodynamic status, which is not given. If he is unstable, the answer is A. "
     "If he is stable, the answer is B.", TR, None),
    ("If the patient were unstable, the next step in management would be exploratory laparotomy. However, he "
     "is stable, so a CT scan of the abdomen with contrast should be performed.", TR, "B"),
    ("The answer is D.\n\nThe clear X-ray after hip surgery points to pulmonary embolism. Option B would be "
     "correct in a patient with orthopnea and edema, none of which she has.", PE, "D"),
    ("Now, if we look at the timing, the answer is D: the dyspnea began after surgery.", PE, "D"),
    # an adverb inside a rejection keeps it one ('is very unlikely', 'is therefore unlikely')
    ("Pneumonia is unlikely without fever. Pneumothorax is excluded by the breath sounds. Heart failure is "
     "also unlikely given the normal BNP. The next step is a CT pulmonary angiogram.", PE, None),
    ("Pneumothorax is excluded by the breath sounds, and pneumonia is unlikely without fever. Heart failure is "
     "very unlikely given the normal BNP. The next step is a CT pulmonary angiogram.", PE, None),
    # a letter that names a thing: 'C. difficile', 'hemophilia B', 'cluster B', 'influenza A'
    ("The diarrhea after antibiotics points to C. difficile infection. Guidelines recommend oral vancomycin "
     "for a first episode.", {"A": "Oral vancomycin", "B": "Intravenous metronidazole", "C": "Oral amoxicillin",
                              "D": "Colectomy"}, "A"),
    ("His factor IX level is low, so this is hemophilia B. Bleeding is treated with factor IX concentrate.",
     {"A": "Factor IX concentrate", "B": "Factor VIII concentrate", "C": "Cryoprecipitate", "D": "Desmopressin"},
     "A"),
    ("The rapid test is positive for influenza A. Within 48 hours of onset she should receive oseltamivir.",
     {"A": "Amantadine", "B": "Oseltamivir", "C": "Acyclovir", "D": "Ribavirin"}, "B"),
    # two options left by elimination, each named by letter and text, are two
    ("We can eliminate C and D. This leaves us with A, acetylation of histones, and B, methylation of "
     "cytosines. Both fit the findings.",
     {"A": "Acetylation of histones", "B": "Methylation of cytosines", "C": "Ribosome aggregation",
      "D": "Hemoglobin precipitation"}, None),
    # a response that ends by asking has not concluded
    ("He has heart failure treated with furosemide. His saturation is 88%. So, what is the most likely cause of "
     "his dyspnea?", PE, None),
]


@pytest.mark.parametrize("response,options,expected", OVERREACH_CASES, ids=[c[0][-40:] for c in OVERREACH_CASES])
def test_parse_choice_does_not_overreach(response, options, expected):
    assert parse_choice(response, options) == expected


GRADED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "graded_cot.jsonl.gz")


def test_parse_choice_agrees_with_graded_real_chain_of_thought():
    """5,222 real chain-of-thought answers to medical multiple-choice questions, each graded by
    reading it (the option it commits to, or null), blind to the parser; 900 of them graded again
    by a second reader, blind to the first, who agreed on 893, the other 7 being answers the first
    reader was unsure of (the readers: tests/data/README.md). Sources (both Apache-2.0):
    - MMMU-Pro's published GPT-4o outputs, the 286 + 286 items of the five Health & Medicine
      subjects (standard 10-option and vision settings): image questions answered step by step
      and asked to end with 'Answer: $LETTER'.
    - InstructGPT's chain-of-thought samples (Liévin et al.) on MedQA-USMLE and MedMCQA validation
      questions, the reasoning alone, cut before the answer-extraction prompt the authors
      appended: answers that conclude in prose, by option-by-option verdicts, by elimination, or
      not at all. Graded in nineteen batches, each before the rules were changed or measured on
      it: usmle-instructgpt (200); -heldout and medmcqa (250); the -heldout2 to -heldout6 sets (250
      each); -heldout7 (200); -heldout8 to -heldout18 (250 each; -heldout15 graded while the
      rules were made, measured once after; -heldout16 graded after them, measured once;
      -heldout17 graded while the ranking rule was made on the earlier sets, measured once after;
      -heldout18 graded after all of it, measured once).
    Each response is read with its question, as the evaluation reads it (EXCEPT questions). The
    counts are those of the current rules; a change that loses one fails here with the responses
    it now reads differently."""
    with gzip.open(GRADED, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    agree, total, misses = Counter(), Counter(), []
    for r in rows:
        got = parse_choice(r["response"], r["options"], r["question"])
        total[r["source"]] += 1
        agree[r["source"]] += got == r["label"]
        if got != r["label"]:
            misses.append(f"{r['source']} {r['id']}: graded {r['label']}, parsed {got} ({r['why']})")
    # per source: (answers graded, answers the parser agrees on at least)
    expected = {"mmmu-pro-standard10-gpt4o": (286, 286), "mmmu-pro-vision-gpt4o": (286, 285),
                "usmle-instructgpt": (200, 185), "usmle-instructgpt-heldout": (100, 94),
                "medmcqa-instructgpt": (150, 128), "usmle-instructgpt-heldout2": (100, 89),
                "medmcqa-instructgpt-heldout2": (150, 128), "usmle-instructgpt-heldout3": (100, 94),
                "medmcqa-instructgpt-heldout3": (150, 128), "usmle-instructgpt-heldout4": (100, 92),
                "medmcqa-instructgpt-heldout4": (150, 133), "usmle-instructgpt-heldout5": (100, 92),
                "medmcqa-instructgpt-heldout5": (150, 128), "usmle-instructgpt-heldout6": (100, 88),
                "medmcqa-instructgpt-heldout6": (150, 118), "usmle-instructgpt-heldout7": (100, 95),
                "medmcqa-instructgpt-heldout7": (100, 89), "usmle-instructgpt-heldout8": (100, 96),
                "medmcqa-instructgpt-heldout8": (150, 133), "usmle-instructgpt-heldout9": (100, 93),
                "medmcqa-instructgpt-heldout9": (150, 128), "usmle-instructgpt-heldout10": (100, 95),
                "medmcqa-instructgpt-heldout10": (150, 123), "usmle-instructgpt-heldout11": (100, 92),
                "medmcqa-instructgpt-heldout11": (150, 126), "usmle-instructgpt-heldout12": (100, 92),
                "medmcqa-instructgpt-heldout12": (150, 130), "usmle-instructgpt-heldout13": (100, 93),
                "medmcqa-instructgpt-heldout13": (150, 133), "usmle-instructgpt-heldout14": (100, 86),
                "medmcqa-instructgpt-heldout14": (150, 126), "usmle-instructgpt-heldout15": (100, 94),
                "medmcqa-instructgpt-heldout15": (150, 126), "usmle-instructgpt-heldout16": (100, 90),
                "medmcqa-instructgpt-heldout16": (150, 124), "usmle-instructgpt-heldout17": (100, 89),
                "medmcqa-instructgpt-heldout17": (150, 118), "usmle-instructgpt-heldout18": (100, 90),
                "medmcqa-instructgpt-heldout18": (150, 126)}
    assert total == {source: n for source, (n, _) in expected.items()}
    second = [r for r in rows if "second_label" in r]
    assert len(second) == 900 and sum(r["second_label"] == r["label"] for r in second) == 893
    assert all(not r["sure"] for r in second if r["second_label"] != r["label"])
    assert all(agree[s] >= least for s, (_, least) in expected.items()), (dict(agree), "\n".join(misses))


@pytest.mark.parametrize("response,rule", [
    ("B", "exact"), ("The answer is B.", "cue"), ("B fits the contrast best of all.", "letter"),
    ("It looks like magnetic resonance imaging.", "option_text"), ("<answer>B</answer>", "answer_tag:exact"),
    ("A) X-ray: This is not the best choice.\nB) Magnetic resonance imaging: This is the best choice.", "verdict"),
    ("Magnetic resonance imaging is the most likely answer.", "cue"),
    ("An X-ray shows bone, an ultrasound shows nothing here.\nTherefore, the scan is magnetic resonance imaging.",
     "conclusion"),
    ("A or B", "none"),
])
def test_parse_choice_rule_names_the_rule_that_decided(response, rule):
    assert parse_choice_rule(response, O4)[1] == rule


@pytest.mark.parametrize("response,expected", [
    ("Answer: \\( \\text{B} \\)", ("B", "cue")), ("So the answer is $\\boxed{\\text{B}}$.", ("B", "cue")),
    ("\\boxed{B}", ("B", "exact")), ("Answer: $B$", ("B", "cue")), ("Answer: \\(\\boxed{B}\\)", ("B", "cue")),
    ("It costs $5 and $10 a scan, so magnetic resonance imaging.", ("B", "option_text")),  # money is no math
    ("Her temperature is \\(38.5\\,^{\\circ}\\text{C}\\). Image with ultrasound first.", ("D", "option_text")),
    ("Fever of $38.5^\\circ C$; ultrasound first.", ("D", "option_text")),  # a temperature's C is no option
    ("Fever \\(38.5^\\circ\\)C and 38.5 \\textdegree C, 38.5° C; ultrasound first.", ("D", "option_text")),
    ("The carrying angle is about 13^\\circ\n\nB", ("B", "letter")),  # the degree sign keeps its line break
    ("Carrying angle: 13^\\circ B", ("B", "letter")),  # only C and F are a temperature's unit
])
def test_an_answer_written_in_latex_is_read_as_the_text_it_wraps(response, expected):
    """Models trained on math write their answer line in LaTeX (as GPT-4o does in the graded
    MMMU-Pro answers: 'Answer: \\( \\text{G} \\)'); the wrapper hides neither the letter nor the cue."""
    assert parse_choice_rule(response, O4) == expected


@pytest.mark.parametrize("response,expected", [
    # single letter: the letter alone, decorated or with its own option text
    ("B", "single_letter"), ("**B**", "single_letter"), ("(b)", "single_letter"), ("B.", "single_letter"),
    ("B. Magnetic resonance imaging", "single_letter"),
    # answer-prefixed: an answer phrase (or the tag) introduces the choice, after a lead-in of at
    # most three words that gives no reason
    ("Answer: B", "answer_prefixed"), ("The answer is B.", "answer_prefixed"),
    ("Final answer: (B) Magnetic resonance imaging", "answer_prefixed"), ("<answer>B</answer>", "answer_prefixed"),
    ("The correct option is B, given the soft tissue contrast.", "answer_prefixed"), ("I choose D.", "answer_prefixed"),
    ("I think the answer is B.", "answer_prefixed"), ("In my opinion, the answer is B.", "answer_prefixed"),
    ("Choice: B", "answer_prefixed"), ("My choice is B.", "answer_prefixed"), ("Selected option: B", "answer_prefixed"),
    # chain of thought: reasoning first, then the choice
    ("The image shows soft tissue. Among the options, MRI fits best because of the contrast, so the answer is B.",
     "cot"),
    ("Bright soft tissue contrast.\n<answer>B</answer>", "cot"),
    ("The cortex and the ventricles are shown with soft tissue contrast and no bone detail: B.", "cot"),
    ("MRI fits, so the answer is B.", "cot"), ("Based on the image, the answer is B.", "cot"),
    ("The soft tissue contrast and the bright fat signal on this sequence: magnetic resonance imaging is the correct "
     "answer.", "cot"),
    ("An X-ray would show the bone and an ultrasound would not reach the brain.\nTherefore, the scan is magnetic "
     "resonance imaging.", "cot"),
    # other: valid, but neither a bare letter nor introduced by an answer phrase nor reasoned out
    ("Ultrasound", "other"), ("Magnetic resonance imaging.", "other"), ("B, because of the contrast.", "other"),
    ("Looks like magnetic resonance imaging.", "other"),
    # ... a verdict after the choice is no answer phrase before it, and a reason after the letter no reasoning first
    ("B is correct.", "other"), ("Option B is correct.", "other"),
    ("Magnetic resonance imaging is the correct answer.", "other"),
    ("B. The image shows soft tissue contrast with a bright fat signal, typical of magnetic resonance imaging.",
     "other"),
    ("A or B", "invalid"), ("I cannot tell.", "invalid"),
])
def test_response_category(response, expected):
    assert response_category(response, O4) == expected
