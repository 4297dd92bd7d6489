"""JSON-lines files (a run's ``metrics.jsonl``) read back, one record per line.

The trainer appends one line per record and may be killed mid-write, so a line that does not
parse is skipped rather than failing the whole file: the trainer reads it when it resumes, the
report and ``compare`` when they plot a run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List


def read_jsonl(path: str | os.PathLike) -> List[Dict[str, Any]]:
    """The records of ``path`` in order; [] when it does not exist; a cut line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the rest is still good
            continue
    return records
