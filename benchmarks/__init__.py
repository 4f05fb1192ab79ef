"""Benchmarks: reward pairwise accuracy, the SpatialWorld oracle and GenEval (DPG-Bench, TIIF-Bench and UniGenBench++
plug into the same registry), behind typed judges with cached, resumable runs.

- judges (`benchmarks.judges`): the `ImageScorer`, `PairwiseJudge`, `YesNoVQA`, `TestpointJudge` and `Detector`
  protocols and their result types; implementations: `benchmarks.spatialscore.SpatialScoreJudge` (a reward
  checkpoint; imported on its own, it loads transformers), the SpatialWorld pixel detector judges
  (`benchmarks.spatialworld`), VLM judges through `shared.chat` (`benchmarks.vlm`), and `Mask2FormerDetector`
  (`benchmarks.detectors`, a local transformers checkpoint for real images);
- caches (`benchmarks.cache`): judge answers in SQLite, generated images, the per-sample JSONL;
- tasks (`benchmarks.tasks`): the registry; `benchmarks.runner.run_task` runs one into an output dir;
- `python -m benchmarks list | run | compare` (`benchmarks.__main__`).
"""

from benchmarks.cache import CachedJudges, ImageCache, JudgeCache, SampleLog
from benchmarks.detectors import CLIPColourClassifier, ColourReadingDetector, Mask2FormerDetector
from benchmarks.images import ImageFolder, PipelineImages, SamplerSettings
from benchmarks.judges import (
    Detection,
    Detector,
    ImageScorer,
    PairwiseJudge,
    PairwiseVerdict,
    Testpoint,
    TestpointJudge,
    TestpointScores,
    YesNoAnswers,
    YesNoVQA,
    image_sha256,
)
from benchmarks.rewards import GenEvalReward
from benchmarks.runner import RunResult, run_task
from benchmarks.spatialworld import (
    SpatialWorldDetector,
    SpatialWorldTestpoints,
    SpatialWorldVQA,
    existence_question,
    existence_statement,
    geneval_metadata,
    parse_claim,
    relation_question,
    relation_statement,
)
from benchmarks.tasks import TASKS, RunInputs, Sample, Task, get_task

__all__ = [
    "TASKS",
    "CachedJudges",
    "Detection",
    "Detector",
    "ImageCache",
    "ImageFolder",
    "ImageScorer",
    "JudgeCache",
    "Mask2FormerDetector",
    "GenEvalReward",
    "CLIPColourClassifier",
    "ColourReadingDetector",
    "PairwiseJudge",
    "PairwiseVerdict",
    "PipelineImages",
    "RunInputs",
    "RunResult",
    "Sample",
    "SampleLog",
    "SamplerSettings",
    "SpatialWorldDetector",
    "SpatialWorldTestpoints",
    "SpatialWorldVQA",
    "Task",
    "Testpoint",
    "TestpointJudge",
    "TestpointScores",
    "YesNoAnswers",
    "YesNoVQA",
    "existence_question",
    "existence_statement",
    "geneval_metadata",
    "get_task",
    "image_sha256",
    "parse_claim",
    "relation_question",
    "relation_statement",
    "run_task",
]
