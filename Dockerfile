# syntax=docker/dockerfile:1
# llmgw in a container, standalone or as a sidecar next to the application that calls it:
#
#   docker build -t llmgw .
#   docker run -d --name llmgw -p 8080:8080 \
#       -v "$PWD/llmgw.toml:/etc/llmgw/llmgw.toml:ro" \
#       -v llmgw-data:/var/lib/llmgw \
#       -e OPENAI_API_KEY -e ANTHROPIC_API_KEY \
#       llmgw
#   docker exec llmgw llmgw keys create --name my-app      # the CLI, on the same database
#   docker stop -t 45 llmgw                                # longer than server.drain_timeout (30 s)
#
# Config: /etc/llmgw/llmgw.toml (LLMGW_CONFIG); the image carries the `llmgw init` starter there,
# mount your own over it. State (SQLite ledger, cache): the /var/lib/llmgw volume (LLMGW_HOME).
# Provider keys, admin and metrics tokens: environment variables named in the config, never baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLMGW_HOME=/var/lib/llmgw \
    LLMGW_CONFIG=/etc/llmgw/llmgw.toml

RUN groupadd --system --gid 10001 llmgw \
    && useradd --system --uid 10001 --gid llmgw --home-dir /var/lib/llmgw --no-create-home \
       --shell /usr/sbin/nologin llmgw \
    && install -d -o llmgw -g llmgw -m 0750 /var/lib/llmgw \
    && install -d -m 0755 /etc/llmgw

# optional extras, e.g. --build-arg EXTRAS=cluster,postgres (Redis and PostgreSQL drivers)
ARG EXTRAS=""
WORKDIR /tmp/llmgw-src
COPY pyproject.toml README.md ./
COPY src ./src
RUN if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; else pip install .; fi \
    && llmgw init --path /etc/llmgw/llmgw.toml \
    && chmod 0644 /etc/llmgw/llmgw.toml \
    && cd / && rm -rf /tmp/llmgw-src

WORKDIR /var/lib/llmgw
USER 10001:10001
VOLUME ["/var/lib/llmgw"]
EXPOSE 8080
# SIGTERM: stop accepting, drain in-flight requests for server.drain_timeout, flush the ledger
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["llmgw"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
