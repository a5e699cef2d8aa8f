# The Mira service node: python server.py on port 8000, as an unprivileged user.
#   docker build --build-arg VERSION=1.2.3 -t mira-service:1.2.3 .                       (or: make docker-build)
#   docker run --rm --stop-timeout 40 -p 8000:8000 --env-file .env mira-service:1.2.3    (or: make docker-run)
# A stop must wait longer than SHUTDOWN_TIMEOUT (default 30 s), the drain the node promises on SIGTERM; the
# engines' own default is 10 s, after which a longer request is cut (exit 137). podman works the same.
# Where no container registry is reachable, `make docker-base` makes a local stand-in for the base image.
FROM python:3.11-slim

ARG VERSION=0.0.0
ENV VERSION=${VERSION} \
    HOST=0.0.0.0 \
    PORT=8000 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# https to the providers needs the system CA bundle (pycurl's wheel brings its own libcurl and OpenSSL).
# ca-certificates follows the base image's Debian release; pinning its version would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mira \
    && useradd --system --uid 10001 --gid mira --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mira

WORKDIR /opt/mira-service

# The pinned runtime set only (no test tools), in its own layer so code changes reuse it; uvloop among it, the
# event loop the node runs on unless EVENT_LOOP=asyncio is set (`docker run -e EVENT_LOOP=asyncio ...`).
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY . ./
RUN python -m compileall -q config.py server.py handlers models utils

USER 10001:10001

EXPOSE 8000
STOPSIGNAL SIGTERM
# Healthy while /health answers 200 (it turns 503 once a SIGTERM starts the drain). No curl in slim images.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=2)"]

CMD ["python", "server.py"]
