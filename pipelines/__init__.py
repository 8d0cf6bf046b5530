"""A TFX-style Deep InfoMax pipeline: ingest -> train -> evaluate -> push.

Stages pass typed artifacts to each other through a local metadata store
(SQLite) that records every execution, its parameters, inputs, outputs and
status; unchanged stages are cached, changed ones rerun, failed ones resume.
Run the whole pipeline with `python -m pipelines.run --flagfile=...`, one
stage with `python -m pipelines.<stage> --flagfile=...`, list what ran with
`python -m pipelines.lineage --pipeline_root=DIR`, and compile the same stages
for Kubeflow Pipelines with `python -m pipelines.kubeflow`.

Built on dim_tf's public API only.
"""
