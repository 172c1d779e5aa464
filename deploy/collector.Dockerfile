# runlab-collector as a container, for deploy/compose.yaml (build context: the repository root).
#   docker build -f deploy/collector.Dockerfile -t runlab-collector .
# Agents are not containers: they measure the host and start workloads on it (.deb or pip install).
FROM python:3.11-slim

# Runtime dependencies at the versions runlab is tested with: requirements.lock also pins the dev tools, but
# as constraints (-c) only what the package needs gets installed. pip compiles the .pyc files here, so the
# container can run with a read-only root.
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY runlab ./runlab
COPY agent ./agent
COPY collector ./collector
RUN pip install --no-cache-dir -c requirements.lock . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/runlab --shell /usr/sbin/nologin runlab \
    && mkdir -p /var/lib/runlab /etc/runlab \
    && chown runlab /var/lib/runlab

WORKDIR /var/lib/runlab
USER runlab
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["runlab-collector"]
CMD ["serve", "--config", "/etc/runlab/collector.yaml"]
