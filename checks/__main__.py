"""`python -m checks 04` checks steps/step_04.py; `python -m checks all` every step."""

import sys

from checks.check import main

sys.exit(main())
