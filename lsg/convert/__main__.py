"""`python -m lsg.convert ...`: a package entry point, so runpy does not re-execute the already imported module."""

import logging

from lsg.convert import main

logging.basicConfig(level=logging.INFO)
main()
