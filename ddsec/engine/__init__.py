"""The distillation engine: unrolled inner SGD and its back-gradient (HVP) pass."""
