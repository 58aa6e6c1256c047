"""What a robot runs: retraining a policy from a distilled dataset with NumPy and onnx only.

This folder imports nothing else from tinypolicy (its own modules by relative import) and
neither torch, gymnasium nor mujoco, so a robot installs tinypolicy or copies exactly this
folder and runs `python -m ondevice.retrain DATASET --out policy.onnx` beside it.

- `errors`: `UserError`, a user's mistake, reported on one line (shared by every stage).
- `artefact`: atomic writes, hashes, versioned JSON manifests, validated .npz arrays.
- `dataset`: the distilled dataset artefact (`load_dataset`, `save_dataset`, `BCRecipe`).
- `onnx_mlp`: the ONNX graph every MLP actor tinypolicy writes goes through.
- `retrain`: the NumPy behaviour-cloning trainer and its command line.

It sits at the bottom of the layering (docs/DESIGN.md): every other package may import it.
"""

__version__ = "0.1.0"  # the package version (pyproject.toml reads it here); a copied folder keeps it
