"""medft: which fine-tuning strategy should I use for my medical imaging modality and backbone?"""
from setuptools import find_packages, setup

setup(
    name="medft",
    version="0.1.0",
    description="Compare fine-tuning strategies of pretrained CNNs on medical image classification",
    python_requires=">=3.10",
    packages=find_packages(include=["engine*", "kernels*", "strategies*", "configs*"]),
    package_data={"configs": ["*.yaml"]},
    install_requires=["torch", "torchvision", "numpy", "pillow", "pyyaml", "matplotlib", "scipy"],
    extras_require={
        "dali": ["nvidia-dali-cuda130"],
        "deepspeed": ["deepspeed"],
        "wandb": ["wandb"],
        "peft": ["peft"],  # strategy lora
        # DICOM with the decoders of its compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE).
        "dicom": ["pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"],
        # The tests exercise the real DALI (CPU mode), DeepSpeed (gloo), W&B (offline), peft and pydicom.
        "dev": ["pytest", "pytest-timeout", "nvidia-dali-cuda130", "deepspeed", "wandb", "peft",
                "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"],
    },
    entry_points={"console_scripts": ["medft = engine.cli:main"]},
)
