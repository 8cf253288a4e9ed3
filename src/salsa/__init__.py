"""SALSA workflow: RLHF with a model-soup KL reference, stage by stage."""

__version__ = "0.1.0"
