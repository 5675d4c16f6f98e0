# leasegate: HTTP service that runs at most one agent run per session,
# across uvicorn workers and replicas, using Redis leases.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEASEGATE_WORKERS=2 \
    LEASEGATE_DATA_DIR=/srv/leasegate/data

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

# `leasegate serve` checks the configuration first (an invalid one exits 2 with one line
# naming the setting: no restart loop of workers), locks the data folder, empties the
# metrics folder in it (the workers share their counts through files there), and runs
# uvicorn's workers, which die with it. Without LEASEGATE_REDIS_URL it starts an embedded
# redis-server with its data in $LEASEGATE_DATA_DIR/redis (a volume keeps it).
# sh expands LEASEGATE_WORKERS; exec makes leasegate PID 1, so `docker stop`'s SIGTERM
# reaches it and the workers finish their runs (LEASEGATE_SHUTDOWN_GRACE_SECONDS).
CMD ["sh", "-c", "exec leasegate serve --host 0.0.0.0 --port 8000 --workers \"${LEASEGATE_WORKERS:-2}\""]
