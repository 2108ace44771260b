# medft on a GPU node: NVIDIA's NGC PyTorch image already ships torch, torchvision, DALI, apex and
# Triton built for its CUDA, so pip must not replace them (the constraints file is not used here).
FROM nvcr.io/nvidia/pytorch:25.10-py3

WORKDIR /opt/medft
COPY setup.py README.md ./
COPY engine ./engine
COPY strategies ./strategies
COPY kernels ./kernels
COPY configs ./configs
COPY bench ./bench
# The versions medft's tests ran with; the image's torch, torchvision, DALI and Triton stay as NGC built them.
RUN pip install --no-cache-dir deepspeed==0.19.8 wandb==0.31.0 peft==0.21.2 scipy==1.17.1 pydicom==3.0.2 \
        pyyaml matplotlib \
    && pip install --no-cache-dir --no-deps -e .

# W&B stays offline unless the user passes WANDB_MODE=online and a key; WANDB_MODE overrides the
# config's tracking.mode.
ENV WANDB_MODE=offline
ENTRYPOINT ["medft"]
CMD ["--help"]
