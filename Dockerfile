# FADA Serve: one image for the gateway (`fada api`), the workers (`fada worker`) and
# `fada migrate`. See docker-compose.yml and the README's "Production with Docker Compose".
#
#   docker build -t fada-serve .                                   # CUDA 12.x torch (GPU hosts)
#   docker build -t fada-serve:cpu --build-arg GPU_KERNELS=0 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # CPU-only torch
# Debian trixie, named: its PostgreSQL client below must match the server's major version.
FROM python:3.11-slim-trixie

# torch first and pinned, from the index that decides its build (CUDA 12.x by default); a
# plain `torch` requirement resolved later would pick whatever PyPI offers.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A C compiler: on a GPU, xgrammar masks the logits with a Triton kernel (Triton comes with
# the CUDA torch wheel), and Triton compiles a small launcher with it on first use.
# pg_dump and pg_restore for `fada backup` / `fada restore` on PostgreSQL, of the major version
# of docker-compose.yml's postgres image (tests/deploy checks they agree): an older pg_dump
# refuses a newer server, and a newer one's dump is not promised to load into an older server.
ARG PG_MAJOR=17
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev "postgresql-client-${PG_MAJOR}" \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

# xgrammar without its declared dependencies, exactly as `make install` does (they pull a
# triton the CPU path never uses; a CUDA torch brings its own).
RUN pip install --no-deps "xgrammar>=0.2.8,<0.3" "apache-tvm-ffi>=0.1.11"

# The project's dependencies in their own layer (cached while pyproject.toml is unchanged),
# then the code. A regular install, not editable: the code lives in site-packages.
COPY pyproject.toml README.md /src/
RUN mkdir -p /src/api /src/worker /src/services /src/shared /src/cli \
    && pip install /src \
    && rm -rf /src/build /src/*.egg-info
COPY api /src/api
COPY worker /src/worker
COPY services /src/services
COPY shared /src/shared
COPY cli /src/cli
RUN pip install --no-deps --force-reinstall /src && rm -rf /src

# The fast linear-attention kernels on GPU images: flash-linear-attention, half of the `gpu`
# extra, is Triton code (Triton comes with the CUDA torch) that transformers binds when it
# imports the model, in place of a PyTorch loop (docs/PERFORMANCE.md). Not on CPU images: its
# kernels are not for CPU tensors. causal-conv1d, the other half, compiles CUDA code with nvcc,
# which this slim image lacks; the PyTorch convolution stands in.
ARG GPU_KERNELS=1
RUN if [ "${GPU_KERNELS}" = "1" ]; then pip install "flash-linear-attention>=0.6.0,<0.7"; fi

# The Alembic scripts are not part of the installed package: `fada migrate` finds them
# through FADA_MIGRATIONS_DIR.
COPY migrations /opt/fada/migrations

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin fada \
    && mkdir -p /var/lib/fada /var/cache/huggingface /models \
    && chown fada:fada /var/lib/fada /var/cache/huggingface

ENV FADA_DATA_DIR=/var/lib/fada \
    FADA_MIGRATIONS_DIR=/opt/fada/migrations \
    HF_HOME=/var/cache/huggingface

USER fada
WORKDIR /var/lib/fada
EXPOSE 8000
CMD ["fada", "api", "--host", "0.0.0.0", "--port", "8000"]
