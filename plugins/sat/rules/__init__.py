"""The SAT rule catalogue, one module per category."""
from . import imports

ALL_RULES = [*imports.RULES]
