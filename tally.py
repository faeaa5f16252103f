"""What happened to records, counted: the one report type of data.py's reader and dataset,
sources.py's readers and mix, curate.py's steps (decontaminate.py's and perplexity.py's too) and
train.py's skip totals. Counts by reason, overall and per source, with the first message of each
reason as its example; as text (a reader's summary), JSON and Markdown (a step's report files).

    python -m pytest -q tests/test_tally.py
"""
from collections import Counter, defaultdict


class Tally:
    """Counts by reason ("image_missing", "dropped:contaminated", "kept", ...), overall and per
    source, each reason's first example message, and the sections a curation step adds (its
    settings, the records it removed, cut-offs). A reader counts the records it looks at in
    `read` and only those it skips by reason, so the rest were `kept`; a curation step counts
    every record under what happened to it.

        t = Tally("train.jsonl"); t.read += 1
        t.count("image_missing", source="vqa_rad", example="train.jsonl line 7: image x.png does not exist")
    """

    def __init__(self, name=""):
        self.name, self.read = name, 0
        self.counts, self.by_source, self.examples, self.sections = Counter(), defaultdict(Counter), {}, {}

    def count(self, reason, source=None, n=1, example=None):
        self.counts[reason] += n
        if source is not None:
            self.by_source[source][reason] += n
        if example is not None:
            self.examples.setdefault(reason, example)

    def add(self, other, prefix="", source=None):
        """Count another tally's reasons (and examples) here, each under prefix + reason."""
        for reason, n in other.counts.items():
            self.count(prefix + reason, source, n, other.examples.get(reason))

    @property
    def kept(self):
        """A reader's records that it did not skip."""
        return self.read - sum(self.counts.values())

    def lines(self):
        """A reader's tally as text: read and kept, then each skip reason with its example."""
        return "\n".join([f"{self.name}: read {self.read}, kept {self.kept}"] + [
            f"  skipped {n} ({reason})" + (f", e.g. {self.examples[reason]}" if reason in self.examples else "")
            for reason, n in sorted(self.counts.items())])

    def to_dict(self):
        return {"counts": dict(self.counts), "by_source": {s: dict(c) for s, c in sorted(self.by_source.items())},
                "examples": dict(self.examples), **self.sections}

    def markdown(self):
        """Tables: each reason with its count and example, the reasons per source, then one per
        section (a string as a code block, a dict as key/value rows, a list of dicts as rows)."""
        md = [_table(["reason", "n", "example"],
                     [[r, n, self.examples.get(r, "")] for r, n in sorted(self.counts.items())])]
        cols = sorted({k for c in self.by_source.values() for k in c})
        if cols:
            md.append(_table(["source"] + cols,
                             [[s] + [c.get(k, 0) for k in cols] for s, c in sorted(self.by_source.items())]))
        for name, v in self.sections.items():
            md.append(f"## {name}\n\n" + (f"```\n{v}\n```" if isinstance(v, str) else
                                          _table(["key", "value"], v.items()) if isinstance(v, dict) else
                                          _table(list(v[0]), [r.values() for r in v]) if v else "(none)"))
        return "\n\n".join(md)


def _table(header, rows):
    cell = lambda v: (f"{v:.4f}" if isinstance(v, float) else str(v)).replace("|", "\\|").replace("\n", " ")[:200]
    return "\n".join(["| " + " | ".join(map(cell, r)) + " |" for r in [header, ["---"] * len(header)] + list(rows)])
