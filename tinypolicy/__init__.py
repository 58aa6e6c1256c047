"""tinypolicy: compress reinforcement-learning control policies for robots and microcontrollers.

The package's layers, bottom to top (docs/DESIGN.md; checked by import-linter in `make test`):

- `tinypolicy.ondevice`: what a robot runs (NumPy + onnx): errors, artefact I/O, datasets,
  the NumPy behaviour-cloning trainer, the ONNX MLP writer.
- `tinypolicy.models`: PyTorch networks, sparse layers, masks, topology updates, FLOPs.
- core modules of this folder, shared by every stage: `envs` (Gymnasium helpers and
  rollouts), `checkpoint` (the training checkpoint artefact), `config` (stage configs as
  dataclasses: dicts, presets and CLI flags derived from them), `plots`, `tables`.
- `tinypolicy.export`: a policy -> ONNX, C and firmware, and measuring those artefacts.
- `tinypolicy.pipeline`: the stages (train, distill, AD, ...), the `compress` orchestrator
  and the command line (`tinypolicy`, `python -m tinypolicy`).
"""

from tinypolicy.ondevice import __version__

__all__ = ["__version__"]
