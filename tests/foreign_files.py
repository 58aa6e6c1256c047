"""Files in other tools' formats, built for tests without those tools' training runs."""
from __future__ import annotations

import io
import json
import zipfile

import torch


def sb3_zip(module: str, action_space: str = "Box") -> bytes:
    """A minimal SB3 model zip: the `data` JSON fields tinypolicy reads and an empty policy.pth."""
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": "gAWV", "__module__": module},
            "action_space": {":type:": f"<class 'gymnasium.spaces.{action_space.lower()}.{action_space}'>"}}
    weights = io.BytesIO()
    torch.save({}, weights)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("data", json.dumps(data))
        z.writestr("policy.pth", weights.getvalue())
    return archive.getvalue()
