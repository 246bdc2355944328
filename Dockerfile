# Lamina's image: one image for every process, `lamina controller|gateway|invoker|migrate`.
#
#   docker build -t lamina .
#   docker run --rm -p 127.0.0.1:8080:8080 lamina gateway     (the default command)
#
# docker-compose.yml runs the whole stack from it (docs/compose.md); the Helm chart runs it
# as uid 10001. Base images are pinned by exact version; bump them together with the
# versions named in docs/compose.md. Linted by hadolint in tests/deploy/test_dockerfile.py.

# Node.js for `nodejs20` functions: only its binary is taken (no npm: function dependencies
# are never installed on an invoker).
FROM node:20.20.2-bookworm-slim AS node

# Build stage: the runtime dependencies and the project go into a venv at /opt/lamina, which
# is all the final stage copies. Wheels only, so no compiler is needed here either.
FROM python:3.11.16-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Exactly the locked versions, every file checked against its sha256 (requirements.lock says
# how to regenerate it from pyproject.toml).
COPY requirements.lock ./
RUN python -m venv /opt/lamina \
 && /opt/lamina/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock
# The build backend of pyproject.toml ([build-system]), pinned by hash too; it only lives in
# this stage's system interpreter, never in /opt/lamina.
RUN printf '%s\n' 'setuptools==84.2.1 --hash=sha256:ca140b45d5325a9478f880e351484f62fef15f336462e449ca0c03c873d589c2' \
      > /tmp/build-requirements.txt \
 && pip install --no-cache-dir --require-hashes -r /tmp/build-requirements.txt
COPY pyproject.toml README.md ./
COPY lamina ./lamina
COPY controller ./controller
COPY gateway ./gateway
COPY invoker ./invoker
COPY migrations ./migrations
# The project itself, without dependencies: every one of them came from the lock above.
# Then the venv's own pip and setuptools go: nothing imports them at run time, and the image
# installs nothing after the build.
RUN pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /tmp/dist . \
 && /opt/lamina/bin/pip install --no-cache-dir --no-deps /tmp/dist/lamina-*.whl \
 && /opt/lamina/bin/pip uninstall --yes pip setuptools

FROM python:3.11.16-slim-bookworm
# What the invoker's sandbox uses at run time (docs/sandbox.md): libseccomp2 loads the seccomp
# filter (tiers A and B), nftables' `nft` installs tier A's egress filter (the opt-in strict
# invoker), libstdc++6 is what the node binary links against.
# DL3008: not pinned on purpose. The Debian release is fixed by the pinned base image and
# bookworm only ships security fixes; exact Debian versions vanish from the mirror at the
# next point release, which would break every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libseccomp2 libstdc++6 nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=build /opt/lamina /opt/lamina
# A fixed uid and gid (10001, as the Helm chart's runAsUser), so volumes and Kubernetes'
# runAsNonRoot agree with the image. /var/lib/lamina is LAMINA_DATA_DIR: a named volume
# mounted there starts as a copy of it, owned by that user.
RUN groupadd --system --gid 10001 lamina \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/lamina \
      --shell /usr/sbin/nologin lamina \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/lamina \
 && node --version \
 && /opt/lamina/bin/lamina --help > /dev/null
# LAMINA_HOST: in a container only the wildcard address is reachable from outside (the
# gateway's laptop default, loopback, would be the container's own loopback).
ENV PATH=/opt/lamina/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LAMINA_DATA_DIR=/var/lib/lamina \
    LAMINA_HOST=0.0.0.0
WORKDIR /var/lib/lamina
USER 10001:10001
EXPOSE 8080
# The gateway's liveness (the default command). The controller and the invoker serve their
# probes on LAMINA_METRICS_LISTEN instead; docker-compose.yml overrides this check for them.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LAMINA_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["lamina"]
CMD ["gateway"]
