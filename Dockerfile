# unetkit segmentation server: `docker build -t unetkit-serve:0.1.0 .`
# Run: docker run -p 8000:8000 -v $PWD/models:/models:ro unetkit-serve:0.1.0
# The model artifact is mounted at /models/model.unetkit (UNETKIT_SERVE_ARTIFACT), never baked in,
# so one image serves every model version. Settings: UNETKIT_SERVE_* variables (docs/serving.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A bare `torch` can pull a multi-GB CUDA build; pass a CPU wheel spec (with its index) here.
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install ${TORCH_SPEC}

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[serve]" && rm -rf /app/src /root/.cache

RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin unetkit
USER 10001

# 0.0.0.0 without a token serves anyone who reaches the port: the server logs a loud warning at start.
# Mount a token file (hashed tokens with scopes, docs/serving.md) and set UNETKIT_SERVE_TOKEN_FILE.
ENV UNETKIT_SERVE_HOST=0.0.0.0 \
    UNETKIT_SERVE_PORT=8000 \
    UNETKIT_SERVE_ARTIFACT=/models/model.unetkit
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["unetkit", "serve"]
