# leasegate: HTTP service that runs at most one agent run per session,
# across uvicorn workers and replicas, using Redis leases.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEASEGATE_WORKERS=2 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/leasegate-metrics

# Unprivileged runtime user with a writable home/work directory.
RUN groupadd --system --gid 10001 leasegate \
 && useradd --system --uid 10001 --gid leasegate \
        --home-dir /srv/leasegate --create-home --shell /usr/sbin/nologin leasegate

# Build from a scratch directory and delete it afterwards, so the image runs
# the installed package and carries no build leftovers (build/, *.egg-info).
# README.md is needed because pyproject.toml names it as the readme.
COPY pyproject.toml README.md /tmp/leasegate-src/
COPY app/ /tmp/leasegate-src/app/
RUN pip install --no-cache-dir --root-user-action=ignore /tmp/leasegate-src \
 && rm -rf /tmp/leasegate-src

WORKDIR /srv/leasegate
# Numeric uid:gid so orchestrators can verify the image runs as non-root.
USER 10001:10001

EXPOSE 8000

# slim images have no curl; urlopen raises (non-zero exit) on errors and non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

# sh expands LEASEGATE_WORKERS; exec replaces sh with uvicorn so SIGTERM from
# `docker stop` reaches uvicorn directly and workers shut down gracefully. The metrics
# folder is emptied first: the workers share their counts through files there.
CMD ["sh", "-c", "rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && exec uvicorn --factory app.main:create_app --host 0.0.0.0 --port 8000 --workers \"${LEASEGATE_WORKERS:-2}\""]
