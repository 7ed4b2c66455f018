"""The tutorial's checkers: `python -m checks NN` (pixi run sNN, make sNN), run from the
project's root. Each runs the learner's code against transformers' GPT-2; tests/test_tutorial.py
proves the checkers themselves.

- check.py        the command line, and `run()`, which checks any (code, step) pairs at once
- learner.py      loading the code under check (steps/, solutions/, or a copy) and explaining its errors
- probe_graph.py  compiling every step's MAX modules into one graph, once
- common.py       the seeded random GPT-2 in transformers that everything is compared with
- report.py       what a pass and a failure say
- sNN_*.py        the checker of step NN
"""
