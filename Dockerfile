# syntax=docker/dockerfile:1
# The PII Key Broker image the Helm chart (helm/pii-key-broker) runs.
#
#   docker build -t pii-key-broker:0.1.0 .
#   docker run --rm -p 8080:8080 --read-only --tmpfs /tmp \
#     -v broker-data:/var/lib/pii-key-broker pii-key-broker:0.1.0
#
# Dependencies come only from the hash-pinned locks: requirements.lock (runtime) and
# requirements-build.lock (the wheel build backend). See docs/deploy.md.

# ---- builder: a virtualenv with the broker and its runtime dependencies -----------------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Runtime dependencies first (their layer survives source changes); wheels only, no compiler.
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --only-binary=:all: --no-deps -r requirements-build.lock

# The broker itself: a wheel built by the pinned backend, installed without touching an index.
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY migrations ./migrations
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-index --no-deps /wheels/pii_key_broker-*.whl \
 && /opt/venv/bin/pip uninstall --yes pip

# ---- runtime: the virtualenv and a non-root user, nothing else -------------------------
FROM python:3.11-slim-bookworm AS runtime

# uid/gid 10001 = the chart's runAsUser/runAsGroup/fsGroup.
RUN groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin broker \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/pii-key-broker

COPY --from=builder /opt/venv /opt/venv

# Nothing writes under the root filesystem at run time: bytecode was compiled at install,
# the broker's data lives in BROKER_HOME (a volume) and temporary files in /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    BROKER_HOME=/var/lib/pii-key-broker \
    BROKER_HOST=0.0.0.0 \
    BROKER_PORT=8080

WORKDIR /var/lib/pii-key-broker
USER 10001:10001
EXPOSE 8080

# For plain Docker; Kubernetes uses the chart's probes instead.
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BROKER_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["broker"]
CMD ["serve"]
