# One image for the web service, the Celery workers and celery beat (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY hooks ./hooks
COPY cds_service ./cds_service
COPY worker ./worker
COPY docs ./docs

# The wheel installs docs/model.md under share/spine-cds, where the service finds it for /model. The
# last line fails the build if the resolved Celery is older than the compose file needs (beat's
# --enable-remote-control, for its health check).
RUN pip install . \
 && test -f "$(python -c 'import sys; print(sys.prefix)')/share/spine-cds/model.md" \
 && spine-cds serve --help >/dev/null \
 && celery beat --help | grep -q -- --enable-remote-control

# Run as an unprivileged user. /data/* are the mount points of the compose volumes: Docker copies this
# ownership into a named volume the first time it is mounted, so the service can write there.
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin spine \
 && mkdir -p /data/instance /data/anchors /data/beat \
 && chown -R spine:spine /data \
 && rm -rf /src

USER spine
WORKDIR /data
ENV SPINE_CDS_INSTANCE_PATH=/data/instance
EXPOSE 8080
CMD ["spine-cds", "serve", "--host", "0.0.0.0", "--port", "8080"]
