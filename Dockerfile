# syntax=docker/dockerfile:1
# Two targets on Debian 12, whose Python 3.11 is the one Orthanc's Python
# plugin embeds, so the plugin uses the node's environment as it is:
#   node     `libra-node serve`, the io and gpu workers, Flower
#   orthanc  the Debian Orthanc with the DICOMweb and Python plugins and orthanc/
# Build: docker compose build   (or docker build --target node|orthanc .)

FROM debian:bookworm-slim AS node

# PyPI's torch wheels for Linux x86_64 are CUDA builds (the CUDA runtime comes
# as nvidia-* wheels): the host needs only the NVIDIA driver and container
# toolkit. pyproject.toml keeps a range that the CPU build also satisfies.
ARG TORCH_VERSION=2.13.0

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/libra-node/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/libra-node/venv \
    && pip install "torch==${TORCH_VERSION}"

WORKDIR /opt/libra-node
COPY pyproject.toml README.md ./
COPY libra_node ./libra_node
COPY workers ./workers
RUN pip install ".[ops]"
COPY orthanc ./orthanc

# One unprivileged user for every service, so that the state volume they
# share (ledger, spool, outbox) is theirs alike.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/libra-node libra \
    && install -d -o libra -g libra -m 0700 /var/lib/libra-node \
    && install -d -o libra -g libra -m 0755 /models
USER libra
ENV LIBRA_NODE__STATE_DIR=/var/lib/libra-node
EXPOSE 11112 9464
CMD ["libra-node", "serve"]


FROM node AS orthanc

USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends orthanc orthanc-dicomweb orthanc-python \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o libra -g libra -m 0700 /var/lib/orthanc/db
COPY orthanc/orthanc.json /etc/libra-node/orthanc.json
# The plugin imports the node's packages from the environment built above.
ENV PYTHONPATH=/opt/libra-node/venv/lib/python3.11/site-packages
USER libra
EXPOSE 4242 8042
CMD ["/usr/sbin/Orthanc", "/etc/libra-node/orthanc.json"]
