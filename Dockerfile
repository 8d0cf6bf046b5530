# The step image of the Kubeflow pipeline and of its TFJob's pods (docs/scale-out.md):
# dim-tf with the Beam and Kubeflow extras, this checkout as the working directory (the
# `pipelines` package runs from a checkout).
#
#   docker build -t REGISTRY/dim-tf:2.21 .                                   # CPU
#   docker build --build-arg TENSORFLOW="tensorflow[and-cuda]==2.21.0" \
#       -t REGISTRY/dim-tf:2.21-gpu .                                        # NVIDIA GPUs
#   docker push REGISTRY/dim-tf:2.21
#
# TensorFlow is pinned to the release setup.py asks for (tests/test_dockerfile.py checks
# that the two agree); the Python is one TF 2.21 publishes wheels for.
FROM python:3.11-slim

ARG TENSORFLOW=tensorflow==2.21.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /opt/dim-tf
COPY . .
RUN pip install "${TENSORFLOW}" -e ".[beam,kubeflow,serving]" \
    && python -c "import dim_tf, pipelines.kubeflow_step, kfp, apache_beam"

# Each step's command is `python -m pipelines.kubeflow_step ...` (or dim_tf.train in a TFJob).
CMD ["python", "-m", "pipelines.run", "--helpfull"]
