# traceexport sidecar image: HTTP ingest on :4319, Dify's Celery ops_trace queue, workflow node enrichment.
# Build:  docker build -t traceexport .
# Run:    docker run -e TRACEEXPORT_TOKEN=... -e TRACEEXPORT_TO=opik -e OPIK_URL_OVERRIDE=... -p 4319:4319 traceexport
# Listening on 0.0.0.0 inside the container, the daemon refuses to start without TRACEEXPORT_TOKEN.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ARCHITECTURE.md ./
COPY src ./src
COPY mappings ./mappings
# The console playground's sample records, which the wheel includes (pyproject's force-include).
COPY tests/data/samples ./tests/data/samples
RUN pip install '.[celery,postgres]' && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /var/lib/traceexport --create-home traceexport
USER traceexport
WORKDIR /var/lib/traceexport

ENV TRACEEXPORT_LISTEN=0.0.0.0:4319 \
    TRACEEXPORT_SPOOL=/var/lib/traceexport/spool \
    TRACEEXPORT_FILE_SINK_DIR=/var/lib/traceexport/out
VOLUME ["/var/lib/traceexport"]
EXPOSE 4319

# /healthz needs no token; python is already in the image (no curl in -slim).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4319/healthz', timeout=4).status == 200 else 1)"]

# SIGTERM stops intake, finishes in-flight requests, keeps the rest in the spool for the next start.
STOPSIGNAL SIGTERM
ENTRYPOINT ["traceexport"]
CMD ["serve"]
