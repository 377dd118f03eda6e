"""The torch rule pack, one module per category."""
ALL_RULES: list = []
