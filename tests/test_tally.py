"""Tests for tally.py: python -m pytest -q tests/test_tally.py"""
from tally import Tally


def test_counts_by_reason_and_source_keep_the_first_example_of_each_reason():
    t = Tally("train.jsonl")
    t.read = 5
    t.count("image_missing", source="vqa_rad", example="line 2: a.png does not exist")
    t.count("image_missing", source="slake", example="line 4: b.png does not exist")
    t.count("invalid_json", n=2)
    assert t.counts == {"image_missing": 2, "invalid_json": 2}
    assert t.by_source == {"vqa_rad": {"image_missing": 1}, "slake": {"image_missing": 1}}
    assert t.examples == {"image_missing": "line 2: a.png does not exist"}
    assert t.kept == 1
    assert t.lines().splitlines() == ["train.jsonl: read 5, kept 1",
                                      "  skipped 2 (image_missing), e.g. line 2: a.png does not exist",
                                      "  skipped 2 (invalid_json)"]


def test_add_counts_another_tally_under_a_prefix_and_source():
    read = Tally("in.jsonl")
    read.count("empty", example="in.jsonl line 3: no turns")
    step = Tally("augment")
    step.add(read, prefix="dropped:invalid_record:", source="vqa_rad")
    assert step.counts == {"dropped:invalid_record:empty": 1}
    assert step.by_source["vqa_rad"] == {"dropped:invalid_record:empty": 1}
    assert step.examples == {"dropped:invalid_record:empty": "in.jsonl line 3: no turns"}


def test_json_and_markdown_hold_counts_sources_examples_and_sections():
    t = Tally("decontaminate")
    t.count("kept", "vqa_rad", n=3)
    t.count("dropped:contaminated", "vqa_rad", example="r1 copies b0")
    t.sections.update(config={"threshold": 0.95}, histogram="1 - 2 | ##", removed=[{"train": "r1", "bench": "a|b"}],
                      errors=[])
    assert t.to_dict() == {"counts": {"kept": 3, "dropped:contaminated": 1},
                           "by_source": {"vqa_rad": {"kept": 3, "dropped:contaminated": 1}},
                           "examples": {"dropped:contaminated": "r1 copies b0"}, "config": {"threshold": 0.95},
                           "histogram": "1 - 2 | ##", "removed": [{"train": "r1", "bench": "a|b"}], "errors": []}
    md = t.markdown()
    assert "| dropped:contaminated | 1 | r1 copies b0 |\n| kept | 3 |  |" in md
    assert "| source | dropped:contaminated | kept |\n| --- | --- | --- |\n| vqa_rad | 1 | 3 |" in md
    assert "## config\n\n| key | value |\n| --- | --- |\n| threshold | 0.9500 |" in md
    assert "## histogram\n\n```\n1 - 2 | ##\n```" in md
    assert "| train | bench |\n| --- | --- |\n| r1 | a\\|b |" in md  # a pipe in a cell is escaped
    assert md.endswith("## errors\n\n(none)")
