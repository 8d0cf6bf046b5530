"""A TFX-style Deep InfoMax pipeline: ingest -> train -> evaluate -> push.

Stages pass typed artifacts to each other through a local metadata store
(SQLite) that records every execution, its parameters, inputs, outputs and
status; unchanged stages are cached, changed ones rerun, failed ones resume.
Run the whole pipeline with `python -m pipelines.run --flagfile=...`, one
stage with `python -m pipelines.run --only=STAGE --flagfile=...`, list what
ran with `python -m pipelines.lineage --pipeline_root=DIR`, and compile the
same stages for Kubeflow Pipelines with `python -m pipelines.kubeflow`.

Built on dim_tf's public API only (`from dim_tf import NAME`, NAME in
`dim_tf.__all__`). Not installed with dim-tf (the name `pipelines` belongs to
another PyPI project): the commands run from the repository root.
"""
