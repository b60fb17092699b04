# Offline stand-in for the pytorch/pytorch base image, for machines without registry access
# (built by scripts/base-image.sh). Like the real one: `python` on PATH is a Python 3.11 that
# already holds torch and torchvision, and `pip install --user` works for a non-root user
# (a venv with system site packages keeps the user site enabled; Debian's own Python refuses
# user installs as an externally managed environment).
ARG OS_IMAGE=localhost/midog25-t2-os:bookworm
FROM ${OS_IMAGE}
ENV PATH=/opt/python/bin:${PATH}
COPY torch-requirements.txt /opt/torch-requirements.txt
# --network none: wheels come from the wheelhouse mounted at /mnt, via the pip.conf mounted
# over /etc/pip.conf (no-index, find-links = /mnt).
RUN python3 -m venv --system-site-packages /opt/python \
 && python -m pip install --no-cache-dir --no-color --requirement /opt/torch-requirements.txt \
 && python -c "import torch, torchvision; print('base:', torch.__version__, torchvision.__version__)"
