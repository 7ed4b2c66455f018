"""The tutorial's checkers: `python -m tests.tutorial.check NN` (pixi run sNN, make sNN).

- check.py    the command line, and `run()`, which checks any (code, step) pairs at once
- learner.py  loading the code under check (steps/, solutions/, or a copy) and explaining its errors
- bench.py    compiling every step's MAX modules into one graph, once
- common.py   the seeded random GPT-2 in transformers that everything is compared with
- report.py   what a pass and a failure say
- sNN_*.py    the checker of step NN
"""
