"""The SAT rule catalogue, one module per category."""
from . import compat, device, fused, imports, quant, rotary

ALL_RULES = [*device.RULES, *imports.RULES, *rotary.RULES, *fused.RULES, *quant.RULES, *compat.RULES]
