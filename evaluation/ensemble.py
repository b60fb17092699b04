"""Average several models' prediction folders into one (e.g. the same recipe trained with several seeds).

Each input folder holds ``<stack stem>.json`` in the challenge's output format (as written by
``python -m model.predict``); the output folder gets the same files for the ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.io import write_json_atomic
from model.predict import format_predictions, p_atypical
from stats.ensemble import mean_logit


class EnsembleError(RuntimeError):
    """Prediction folders that cannot be averaged; the message names the file."""


def ensemble_folders(folders: list[Path], out: Path, threshold: float) -> int:
    """Write ``out/<stem>.json`` for every stack of the first folder; returns the number of stacks.

    ``threshold`` sets each entry's class; no default here: the command passes ``--threshold`` or
    the model card's, as ``score`` and ``report`` do."""
    stems = sorted(p.name for p in folders[0].glob("*.json"))
    if not stems:
        raise EnsembleError(f"{folders[0]}: no prediction files (*.json)")
    for name in stems:
        members = []
        for folder in folders:
            path = folder / name
            if not path.is_file():
                raise EnsembleError(f"{path}: missing (every folder must hold the same stacks)")
            members.append([p_atypical(e) for e in json.loads(path.read_text())])
        if len({len(m) for m in members}) != 1:
            raise EnsembleError(f"{name}: page counts differ between folders ({[len(m) for m in members]})")
        probs = [mean_logit(list(page)) for page in zip(*members)]
        write_json_atomic(format_predictions(probs, threshold), out / name)
    return len(stems)
