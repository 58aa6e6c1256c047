"""Turning a trained policy into deployable artefacts and measuring them: the export bundle
(ONNX fp32/int8 with dead neurons removed, sparse and dense C kernels), latency and return
benchmarks on this CPU, Cortex-M and aarch64 firmware under QEMU, and the ONNX export of the
Algorithm Distillation transformer.

May import the core modules, models and ondevice; never the pipeline (which calls it).
"""
