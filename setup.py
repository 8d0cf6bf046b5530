from setuptools import find_packages, setup

BEAM = ["apache-beam>=2.77,<3", "tensorflow-hub>=0.16"]

setup(
    name="dim-tf",
    version="0.1.0",
    description="Deep InfoMax (Hjelm et al., ICLR 2019) in TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # The pipeline (pipelines/) is not installed: a top-level package named
    # "pipelines" belongs to another PyPI project, and the pipeline is an application
    # run from a checkout (python -m pipelines.run), built on dim_tf's public names.
    packages=find_packages(include=["dim_tf", "dim_tf.*"]) + ["dim_tf.configs"],
    # The flagfiles of configs/ ship inside the package, so an installed dim_tf runs
    # `--flagfile=configs/NAME.flags` (or `--flagfile=NAME`) from any directory.
    package_dir={"dim_tf.configs": "configs"},
    package_data={"dim_tf": ["data/samples/README.md", "data/samples/*/*/*/*.jpg"],
                  "dim_tf.configs": ["*.flags", "serving/*.config", "serving/*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        # keras_hooks.py overrides two private methods checked on 3.15.
        "keras>=3.15,<3.16",
        "tensorflow-datasets>=4.9.10",
        "absl-py>=2.1",
        "tensorboard>=2.21,<2.22",
        # tensorflow-datasets needs it on Python 3.11 but does not declare it
        # (tensorflow/datasets#11212).
        "importlib_resources",
        # Evaluation reports: plots and the t-SNE embedding.
        "matplotlib>=3.8",
        "scikit-learn>=1.4",
    ],
    extras_require={
        # The gRPC client of `python -m dim_tf.embed`.
        "serving": ["tensorflow-serving-api>=2.21,<2.22"],
        # Compiling the pipeline for Kubeflow Pipelines (python -m pipelines.kubeflow) and
        # training as a Training Operator TFJob (--train_launcher=tfjob).
        "kubeflow": ["kfp>=2.14,<3", "kfp-kubernetes>=1.4,<3", "kubeflow-training>=1.9,<2"],
        # Ingest and batch embedding on Apache Beam (--ingest_runner=beam, dim_tf.embed
        # --engine=beam). Beam's TensorFlow model handler imports tensorflow_hub. Beam
        # 2.77 pins pillow<13, pyarrow<26 and python-dateutil<3: pip downgrades them. On
        # Dataflow add its extra: pip install "apache-beam[gcp]".
        "beam": BEAM,
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "tensorflow-serving-api>=2.21,<2.22",
                "kfp>=2.14,<3", "kfp-kubernetes>=1.4,<3", "kubeflow-training>=1.9,<2", *BEAM],
    },
)
