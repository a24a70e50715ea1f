# autotune on a CUDA machine: `docker run --gpus all -v $PWD/models:/models autotune probe ...`
# The base image carries CUDA, cuDNN and a CUDA build of PyTorch; flash-attn is installed from a
# prebuilt wheel where one matches (pip builds it from source otherwise, which needs the -devel image).
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-devel

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 MAX_JOBS=4
WORKDIR /opt/autotune

# Dependencies first (cached layer), without touching the image's torch.
RUN pip install "transformers>=4.56" "peft>=0.17" "accelerate>=1.0" "bitsandbytes>=0.45" "pyyaml>=6" "rich>=13" \
        "deepspeed>=0.16" \
 && pip install --no-build-isolation "flash-attn>=2.6"

COPY pyproject.toml README.md ./
COPY autotune ./autotune
RUN pip install --no-deps .

WORKDIR /work
ENTRYPOINT ["python", "-m", "autotune"]
CMD ["--help"]
