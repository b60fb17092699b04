# MIDOG 2025 Track 2 atypical-mitosis classifier (Grand Challenge algorithm container).
# torch 2.14.1 wheels are CUDA 13.0 builds with kernels for sm_75 (T4) to sm_120; the base image
# must carry the same torch as requirements.txt so that pip installs nothing heavy.
# Builds without registry access pass --build-arg BASE_IMAGE=<local image with python3 + torch>.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/home/user/.local/bin:${PATH}

RUN groupadd --system user && useradd --create-home --no-log-init --system --gid user user
WORKDIR /opt/app

# Root-owned, world-readable application files: the non-root user can read but not change them.
COPY requirements.txt /opt/app/
USER user
RUN python -m pip install --user --no-cache-dir --no-color --requirement /opt/app/requirements.txt

COPY process.py /opt/app/
COPY model /opt/app/model
COPY weights /opt/app/weights

ENTRYPOINT ["python", "process.py"]
