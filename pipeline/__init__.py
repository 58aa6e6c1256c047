"""tinypolicy's stages (training, and later distillation, retraining and AD), the
`compress` orchestrator and the command-line interface."""

__version__ = "0.1.0"
