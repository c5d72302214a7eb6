from setuptools import find_packages, setup

# Versions are the ones the test suite ran against; torch exactly, since its builds
# differ by version (from PyPI on Linux it is the CUDA build: see README, Quick start).
INSTALL_REQUIRES = [
    "torch==2.13.0",
    "ray[default,data,train]==2.60.0",
    "webdataset==1.0.2",
    "pyarrow==26.0.1",
    "pandas==3.1.1",
    "numpy==2.4.6",
    "click==8.5.1",
    "pillow==13.0.0",
    "matplotlib==3.11.2",
    "mlxtend==0.25.0",
    "safetensors==0.8.0",
    "scipy==1.17.1",
    "tqdm==4.70.1",  # progress bars on an interactive terminal
]

TEST_REQUIRES = [
    "hypothesis==6.170.17",
    "pytest==9.2.0",
    "pytest-timeout==2.4.0",
    "selenium==4.38.0",
    # A local S3 (moto_server) for the object-storage tests, and a client to fill it.
    "moto[server]==5.2.5",
    "boto3==1.44.8",
]


def read_version():
    namespace = {}
    with open("pipeline/version.py") as handle:
        exec(handle.read(), namespace)
    return namespace["__version__"]


setup(
    name="simgan-pipeline",
    version=read_version(),
    description="SimGAN (S+U learning) as a batch dataset-refinement pipeline",
    packages=find_packages(include=["pipeline", "pipeline.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={
        "console_scripts": [
            "simgan=pipeline.cli:main",
            "refine-dataset=pipeline.commands.refine:refine_dataset_main",
        ]
    },
)
