"""Checks that only make sense inside the built image; test.sh runs this file there.

    <engine> run --rm --network none --entrypoint python -e PYTHONPATH=/opt/app \
        -v .../image_check.py:/opt/check/image_check.py:ro \
        -v test/input:/input:ro -v OUT:/output -v VOLUME:/tmp IMAGE /opt/check/image_check.py

The application in /opt/app is not pip-installed: PYTHONPATH=/opt/app makes ``import process`` and
``import model`` find it, as the image's own entrypoint (``python process.py`` in /opt/app) does.

1. The job runs as a non-root user.
2. The shipped weights (/opt/app/weights) load, and the whole job on /input runs through
   process.py's own main() and writes a well-formed output.
3. Nothing opens, binds or resolves a network socket during that job: an audit hook
   (PEP 578) records every ``socket.*`` event from interpreter start-up on.
4. The user can write /output and /tmp and nothing else: every other place a program might
   write to (the application, its weights, the libraries, /, /etc, /usr, /var, its home) refuses.

Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import sys

SOCKET_EVENTS: list[str] = []


def _audit(event: str, args) -> None:
    if event.startswith("socket."):
        SOCKET_EVENTS.append(f"{event}{args!r}"[:200])


sys.addaudithook(_audit)  # before any other import: catches sockets opened at import time too

import errno  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

APP = Path("/opt/app")
FAILURES: list[str] = []


def report(ok: bool, what: str) -> None:
    print(f"image check: {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        FAILURES.append(what)


def can_write(folder: Path) -> bool:
    """Whether a new file can be created in ``folder`` (removed again at once)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".image-check-", dir=folder)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            return False
        raise
    os.close(fd)
    os.unlink(name)
    return True


def can_modify(path: Path) -> bool:
    try:
        with open(path, "ab"):
            return True
    except OSError:
        return False


def main() -> int:
    uid = os.getuid()
    report(uid != 0 and os.geteuid() != 0, f"runs as a non-root user (uid {uid})")

    import process  # the entrypoint itself, as the image runs it

    out = Path("/output")
    rc = process.main(["--input", "/input", "--output", str(out), "--device", "cpu"])
    result = out / process.OUTPUT_FILE
    entries = json.loads(result.read_text()) if result.is_file() else None
    report(rc == 0 and isinstance(entries, list) and len(entries) > 0,
           f"process.main on /input with the shipped weights: exit {rc}, "
           f"{len(entries) if entries else 0} pages written")

    from model.predict import DEFAULT_WEIGHTS

    report(DEFAULT_WEIGHTS == APP / "weights" and (DEFAULT_WEIGHTS / "model.safetensors").is_file(),
           f"the baked-in weights are at {DEFAULT_WEIGHTS}")
    report(not SOCKET_EVENTS, f"no socket opened ({len(SOCKET_EVENTS)} socket events"
           + (f": {SOCKET_EVENTS[:3]})" if SOCKET_EVENTS else ")"))

    import torch

    # Grand Challenge's T4 hosts (sm_75) are not documented with driver R580+, which CUDA 13 needs.
    arch = torch._C._cuda_getArchFlags().split() if torch.version.cuda else []
    report(str(torch.version.cuda).startswith("12.") and "sm_75" in arch,
           f"torch {torch.__version__} is a CUDA 12 build with T4 (sm_75) kernels "
           f"(CUDA {torch.version.cuda}; {' '.join(arch) or 'no CUDA kernels'})")
    writable = {p: can_write(p) for p in (out, Path("/tmp"))}
    report(all(writable.values()), f"writes /output and /tmp ({writable})")
    forbidden = [Path("/"), APP, APP / "model", APP / "weights", Path(torch.__file__).parent,
                 Path(json.__file__).parent, Path("/etc"), Path("/usr"), Path("/var"), Path("/opt"),
                 Path(os.path.expanduser("~"))]
    wrote = [str(p) for p in forbidden if can_write(p)]
    wrote += [str(p) for p in (APP / "process.py", APP / "weights" / "model.safetensors",
                               APP / "weights" / "model_card.json") if can_modify(p)]
    report(not wrote, f"cannot write anywhere else ({len(forbidden) + 3} places tried"
           + (f"; writable: {wrote})" if wrote else ")"))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
