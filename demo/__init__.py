"""The demo: the whole pipeline on generated medical VQA, small enough for a CPU. run.py drives it
(`python -m demo.run`) and report.py writes its report.md; synthetic.py makes the data and the
stand-ins for what a real run downloads."""
