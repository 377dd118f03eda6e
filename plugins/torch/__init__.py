"""porter's device rule pack for any PyTorch code (import name ``porter_torch``)."""
