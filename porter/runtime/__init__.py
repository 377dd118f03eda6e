"""What patched libraries import: the device layer and the fused-op registry.

Kept light on purpose: importing it pulls torch and nothing of porter's core (no libcst, pluggy or CLI).
"""
