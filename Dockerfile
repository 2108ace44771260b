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
RUN pip install --no-cache-dir deepspeed wandb && pip install --no-cache-dir --no-deps -e . \
    && pip install --no-cache-dir pyyaml matplotlib

# W&B stays offline unless the user passes WANDB_MODE=online and a key.
ENV WANDB_MODE=offline
ENTRYPOINT ["medft"]
CMD ["--help"]
