"""The results as JSON with every raw sample: one run is exactly the ExperimentResult object, several an array.

The same encoding as :func:`runlab.results.encode_json` (msgspec, indent 2), so
:func:`runlab.results.decode_json` reads a single-run file back, and
``msgspec.json.decode(data, type=list[ExperimentResult])`` reads a merged one.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from runlab.results import ExperimentResult, encode_json


def write(results: Sequence[ExperimentResult]) -> str:
    """``{"experiment": …, "variants": […], …}`` for one result; a JSON array of such objects otherwise."""
    if len(results) == 1:
        data = encode_json(results[0])
    else:
        data = msgspec.json.format(msgspec.json.encode(list(results)), indent=2)
    return data.decode() + "\n"
