"""Starts `target/release/govlm serve` for the Python tests: a models.toml written to a
temporary directory, a free port, `/health` polled until ready; stopped (and its log printed if
it failed) when the context exits."""

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "govlm"
STARTUP_TIMEOUT_S = 180


def model_path(file: str) -> Path:
    """An installed model file (asserts it is there)."""
    path = ROOT / "models" / file
    assert path.is_file(), f"{path} is missing: run `make models` first"
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(base: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"govlm exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"govlm did not become healthy in {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}")


@contextlib.contextmanager
def running(models: dict, default: str, data_dir: bool = False, tag: str = "govlm-pytest-"):
    """Serves `models` ({id: (model file path, context length)}) with `default` as default_model;
    `data_dir`: give the Files/Batch API a temporary --data-dir. Yields the base URL."""
    assert BINARY.is_file(), f"{BINARY} is missing: run `make build` first"
    tmp = Path(tempfile.mkdtemp(prefix=tag))
    config = tmp / "models.toml"
    config.write_text(
        f'default_model = "{default}"\n'
        + "".join(
            f'\n[[models]]\nid = "{mid}"\ngguf = "{path}"\ncontext_length = {ctx}\n'
            for mid, (path, ctx) in models.items()
        )
    )
    port = _free_port()
    args = [str(BINARY), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    if data_dir:
        args += ["--data-dir", str(tmp / "data")]
    log_path = tmp / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp))
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc, log_path)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode not in (0, -15):
            sys.stderr.write(log_path.read_text())
