# llmkit itself, CPU build: docker build -t llmkit .
# then, from a project folder: docker run --rm -v "$PWD:/work" llmkit quickstart
# For GPU hosts build with --build-arg TORCH_INDEX_URL= left empty (PyPI's Linux wheels carry CUDA)
# and run with --gpus all; for a small CPU image pass PyTorch's CPU wheel index as TORCH_INDEX_URL.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
RUN pip install ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL} "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[all]" && rm -rf /src
RUN useradd --create-home --uid 1000 llmkit && mkdir /work && chown llmkit /work
USER llmkit
WORKDIR /work
ENTRYPOINT ["llmkit"]
CMD ["--help"]
