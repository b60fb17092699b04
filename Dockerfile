# MIDOG 2025 Track 2 atypical-mitosis classifier (Grand Challenge algorithm container).
# torch 2.10.0 is the newest release whose default wheels are CUDA 12.8 builds (2.11 and later need
# CUDA 13, i.e. NVIDIA driver R580+, which Grand Challenge's T4 (sm_75) hosts are not documented to
# have); the base image must carry the same torch as requirements.txt so that pip installs nothing heavy.
# Builds without registry access pass --build-arg BASE_IMAGE=<local image with python + torch>
# (scripts/base-image.sh makes one; build.sh passes it). Nothing else differs between the two.
ARG BASE_IMAGE=pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The run-time user (Grand Challenge's convention: 'user'): no home, no login shell, owns nothing.
RUN groupadd --system user \
 && useradd --system --no-create-home --no-log-init --gid user --shell /usr/sbin/nologin user

WORKDIR /opt/app
# Libraries and application files are installed and copied as root: the run-time user can read
# and run them but change nothing; it writes only to /output and /tmp.
COPY requirements.txt /opt/app/
RUN python -m pip install --no-cache-dir --no-color --requirement /opt/app/requirements.txt

COPY process.py /opt/app/
COPY model /opt/app/model
COPY weights /opt/app/weights

USER user
ENTRYPOINT ["python", "process.py"]
