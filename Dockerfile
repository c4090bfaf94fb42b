# syntax=docker/dockerfile:1
# The adamhub service. Give it a Redis with ADAMHUB_REDIS_URL (docker-compose.yml does);
# without one it runs its embedded store in the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# GNU OpenMP: the thread pool that lets the Adam kernel run in several threads at once
# (without it numba falls back to a pool that takes one launch at a time).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['service']))" > requirements.txt \
    && pip install -r requirements.txt

COPY README.md ./
COPY client ./client
COPY service ./service
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 adamhub \
    && mkdir /data \
    && chown adamhub /data

USER 10001
ENV ADAMHUB_HOST=0.0.0.0 \
    ADAMHUB_PORT=8000 \
    ADAMHUB_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

CMD ["adamhub-service", "serve"]
