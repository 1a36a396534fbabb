# syntax=docker/dockerfile:1
# The diffq image: the API, the workers, beat and Flower all run from it (see compose.yaml).
#
# TORCH_INDEX_URL picks the PyTorch build, installed before diffq so that nothing else pulls one:
#   CUDA 12.8 wheels by default, for GPU workers;
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for a small CPU-only image;
#   any other https://download.pytorch.org/whl/<cuXYZ> to match an older driver.
FROM python:3.12-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    DIFFQ_HOME=/var/lib/diffq \
    DIFFQ_MODELS_DIR=/models \
    HF_HOME=/models/.hf

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY cli ./cli
COPY core ./core
COPY migrations ./migrations
COPY models_store ./models_store
COPY workers ./workers
RUN pip install .

RUN useradd --create-home --uid 1000 diffq \
    && mkdir -p /var/lib/diffq /models \
    && chown diffq:diffq /var/lib/diffq /models
USER diffq

EXPOSE 8000 5555
CMD ["diffq", "--help"]
