# gpuacct's control-plane services (gpuacct-billing, gpuacct-enforcer, gpuacct-web) for
# compose/compose.yaml. Nodes run gpuacct-exporter from deploy/install-node.sh instead.
FROM python:3.12.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY gpuacct ./gpuacct
COPY exporter ./exporter
COPY billing_engine ./billing_engine
COPY enforcer ./enforcer
COPY web ./web
COPY stack ./stack
COPY rules ./rules
RUN pip install -c constraints.txt . \
 && useradd --system --uid 10001 --home-dir /var/lib/gpuacct --shell /usr/sbin/nologin gpuacct \
 && install -d -o gpuacct -g gpuacct -m 0750 /var/lib/gpuacct \
 && rm -rf /src

USER gpuacct
WORKDIR /var/lib/gpuacct
