"""Loaders, scoring and writers for three official benchmark formats: DPG-Bench (`dpg`), TIIF-Bench (`tiif`) and
UniGenBench / UniGenBench++ (`unigenbench`).

Each loader takes the path of the official file(s) and raises `MissingBenchmarkFile` (naming the expected file and
where the official one lives) when it is not there, `BenchmarkFormatError` when it cannot be read. Each scorer takes
the loaded prompts and the judge's answers (None for an answer it could not parse: scored as a failure and counted)
and returns a typed result with percentages. Each writer puts SpatialWorld held-out prompts (`spatialworld`) into
the official format, so that loaders and scorers run end to end on SpatialWorld images.
"""

from benchmarks.formats.dpg import (
    DpgItem,
    DpgQuestion,
    DpgResult,
    DpgScores,
    load_dpg,
    load_dpg_prompts,
    score_dpg,
    write_dpg,
)
from benchmarks.formats.errors import BenchmarkFormatError, MissingBenchmarkFile
from benchmarks.formats.spatialworld import SpatialWorldPrompt, load_spatialworld_prompts, spatialworld_prompts
from benchmarks.formats.tiif import (
    TiifPrompt,
    TiifResult,
    TiifScores,
    load_tiif,
    score_tiif,
    spatialworld_dimension,
    write_tiif,
)
from benchmarks.formats.unigenbench import (
    MalformedRow,
    UniGenBench,
    UniGenPrompt,
    UniGenResult,
    UniGenScores,
    load_unigenbench,
    score_unigenbench,
    write_unigenbench,
)

__all__ = [
    "BenchmarkFormatError",
    "DpgItem",
    "DpgQuestion",
    "DpgResult",
    "DpgScores",
    "MalformedRow",
    "MissingBenchmarkFile",
    "SpatialWorldPrompt",
    "TiifPrompt",
    "TiifResult",
    "TiifScores",
    "UniGenBench",
    "UniGenPrompt",
    "UniGenResult",
    "UniGenScores",
    "load_dpg",
    "load_dpg_prompts",
    "load_spatialworld_prompts",
    "load_tiif",
    "load_unigenbench",
    "score_dpg",
    "score_tiif",
    "score_unigenbench",
    "spatialworld_dimension",
    "spatialworld_prompts",
    "write_dpg",
    "write_tiif",
    "write_unigenbench",
]
