"""tfdiffusion: denoising diffusion models in TensorFlow 2 / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="tfdiffusion",
    version="0.1.0",
    description="Denoising diffusion models for TensorFlow 2 and Keras 3: maths, layers, fast samplers, TF Serving export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tfdiffusion", "tfdiffusion.*"]),
    install_requires=[
        "tensorflow>=2.21",
        "keras>=3.12",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # tensorflow-datasets 4.9.10 imports it without declaring it
        "numpy",
        "scipy",  # metrics (sqrtm) and analytic (the exact ODE solution)
        "matplotlib",
        "absl-py",
        "ml-collections",
        "tensorboard",
        "scikit-learn",
        "tensorflow-serving-api>=2.21",  # ModelServerConfig for TF Serving's models.config
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis"],
    },
    license="Apache-2.0",
)
