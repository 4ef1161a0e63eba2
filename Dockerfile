# The sftpjail image: a Python virtual environment on Debian bookworm,
# run as an unprivileged user from a read-only root filesystem.
#
# With an image registry and PyPI:      docker build -t sftpjail .
# Without them (see docs/docker.md):    scripts/build-image.sh
# The script passes BASE_IMAGE (a debootstrap-made bookworm) and
# PIP_OPTIONS pointing pip at deploy/container/wheels/ instead of PyPI.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- builder: the virtual environment with sftpjail and its dependencies.
FROM ${BASE_IMAGE} AS builder
ARG PIP_OPTIONS=""

COPY deploy/container/wheels/ /wheels/
COPY pyproject.toml README.md /src/
COPY src/ /src/src/

# PIP_OPTIONS stays unquoted: it holds several options, or none.  pip and
# setuptools leave the venv once they have done their job: the final image
# cannot install anything.
RUN python3 -m venv /opt/sftpjail \
    && /opt/sftpjail/bin/pip install --no-cache-dir --disable-pip-version-check \
        ${PIP_OPTIONS} /src \
    && /opt/sftpjail/bin/python -m pip uninstall --yes --quiet pip setuptools

# --- runtime: the final file system, assembled here and flattened below.
FROM ${BASE_IMAGE} AS runtime

# libseccomp2 is loaded through ctypes by the seccomp layer; nftables serves
# the optional in-container firewall.  The offline base already has both,
# so apt only runs where a registry (and so a mirror) is in reach.
RUN missing=""; \
    for package in libseccomp2 nftables; do \
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null \
            | grep -q "ok installed" || missing="$missing $package"; \
    done; \
    if [ -n "$missing" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# A fixed uid and gid: volumes, the users file and the entry point rely on it.
RUN groupadd --gid 10001 sftpjail \
    && useradd --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin sftpjail \
    && install -d -o sftpjail -g sftpjail -m 0750 /data /state \
    && install -d -m 0755 /etc/sftpjail /etc/sftpjail/users

COPY --from=builder /opt/sftpjail /opt/sftpjail
COPY deploy/container/config.toml deploy/container/container-firewall.nft \
    /etc/sftpjail/
COPY deploy/container/entrypoint.sh /usr/local/bin/sftpjail-entrypoint

# Nothing may be installed or built at run time: remove the package
# managers (apt, dpkg, pip, ensurepip and the wheels behind it) and perl,
# which only dpkg's scripts needed.  /var/lib/dpkg/status stays so image
# scanners can still list what is inside.  No set-uid binary either:
# no-new-privileges makes them inert, this makes them absent.
RUN rm -rf /usr/bin/apt* /usr/bin/dpkg* /usr/sbin/dpkg* /usr/lib/apt \
        /usr/lib/dpkg /etc/apt /var/lib/apt /var/cache/apt /var/cache/debconf \
        /usr/bin/perl* /usr/lib/*-linux-gnu/perl* /usr/share/perl* \
        /usr/local/bin/pip* /usr/local/lib/python3*/site-packages/pip \
        /usr/local/lib/python3*/ensurepip /usr/lib/python3*/ensurepip \
        /usr/share/python-wheels /usr/share/doc /usr/share/man /usr/share/info \
        /usr/share/locale \
    && find / -xdev -type f -perm /6000 -exec chmod a-s {} + \
    && chmod 0755 /usr/local/bin/sftpjail-entrypoint \
    && chmod 0644 /etc/sftpjail/config.toml /etc/sftpjail/container-firewall.nft

# --- final: one layer, so removed files are gone rather than hidden.
FROM scratch
COPY --from=runtime / /

ENV PATH=/opt/sftpjail/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SFTPJAIL_CONFIG=/etc/sftpjail/config.toml

LABEL org.opencontainers.image.title="sftpjail" \
      org.opencontainers.image.description="SFTP-only server that jails every user with the kernel" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 10001:10001
WORKDIR /
VOLUME ["/data", "/state"]
EXPOSE 2222
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["sftpjail", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/sftpjail-entrypoint"]
CMD ["sftpjail", "serve"]
