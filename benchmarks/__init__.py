"""Benchmarks: reward pairwise accuracy, the SpatialWorld oracle, GenEval, DPG-Bench, TIIF-Bench and UniGenBench++,
behind typed judges with cached, resumable runs. Built in the benchmarks issue."""
