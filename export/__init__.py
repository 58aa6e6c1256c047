"""Deployment artefacts and their measurements: FLOPs and parameter counts now; ONNX,
C code generation, latency benchmarks and embedded targets as those stages land."""
