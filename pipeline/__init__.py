"""The stages (train, evaluate, distill, generalise, sweep, Algorithm Distillation), the
`compress` orchestrator that runs them in order, its report, and the `tinypolicy` command line.

Top layer: may import the export stages, the core modules, models and ondevice; nothing
imports it but `python -m tinypolicy`.
"""
