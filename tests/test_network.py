"""Networks that stall or refuse: every call to the Hub or to W&B ends within its bound, in one line.

Real sockets: a local server that accepts connections and never answers, and a closed port. The
Hub's client reads ``HF_ENDPOINT`` when imported, so each case runs in a fresh process. The Hub's
bounds are set to 2 s here (``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``) and W&B's to 3 s
(``WANDB_INIT_TIMEOUT``) to keep the tests short; the elapsed times asserted would be minutes
without them (the Hub client retries six times, W&B waits 90 s).
"""

import os
import socket
import threading
import time

import pytest
from conftest import free_port, run_cli

from trainer.training.tracking import WANDB_INIT_TIMEOUT_S, LoggingConfig, tracker_setup

HUB_BOUNDS = {"HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
FAKE_WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def silent_server():
    """The URL of a local TCP server that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture(params=["silent", "refused"])
def unreachable(request, silent_server):
    """(URL, the reason the one line gives) for a Hub that never answers, and one that refuses."""
    if request.param == "silent":
        return silent_server, "no answer within"
    return f"http://127.0.0.1:{free_port()}", "Connection refused"


def timed(args: list[str], cwd, env: dict, module: str = "trainer"):
    started = time.monotonic()
    done = run_cli(args, cwd, env=env, module=module, timeout=150)
    return done, time.monotonic() - started


def one_line(done, *phrases: str) -> str:
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr[-3000:]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def hub_env(tmp_path, endpoint: str) -> dict:
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), **HUB_BOUNDS}


@pytest.fixture(scope="module")
def trained_without_wandb(tmp_path_factory, silent_server):
    """A tiny run with a W&B key whose server never answers: (process, seconds, run folder)."""
    work = tmp_path_factory.mktemp("wandb-silent")
    env = {"WANDB_API_KEY": FAKE_WANDB_KEY, "WANDB_BASE_URL": silent_server, "WANDB_INIT_TIMEOUT": "3"}
    env["XDG_CACHE_HOME"] = str(work / "cache")
    args = ["--config", "tiny", f"--train.output_dir={work / 'run'}", "--logging.tracker=wandb", "--train.max_steps=3"]
    done, seconds = timed(args, work, env)
    return done, seconds, work / "run"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A complete exported model folder, from a tiny run."""
    work = tmp_path_factory.mktemp("exported")
    args = ["--config", "tiny", f"--train.output_dir={work / 'run'}", "--train.max_steps=2", "--logging.tracker=none"]
    done = run_cli(args, work, env={"XDG_CACHE_HOME": str(work / "cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    return work / "run" / "best"


@pytest.mark.slow
def test_a_hub_model_that_cannot_be_reached_fails_in_one_line_within_the_bound(tmp_path, unreachable):
    endpoint, reason = unreachable
    done, seconds = timed(
        ["--model", "someone/sentiment", "a fine film"], tmp_path, hub_env(tmp_path, endpoint), "trainer.predict"
    )
    one_line(done, "could not be reached", endpoint, reason, "HF_HUB_OFFLINE=1")
    assert seconds < 40, f"{seconds:.0f}s"


@pytest.mark.slow
def test_a_hub_dataset_that_cannot_be_reached_fails_in_one_line_without_retries(tmp_path, unreachable):
    endpoint, reason = unreachable
    run = tmp_path / "run"
    args = ["--config", "tiny", "--data.name=someone/reviews", f"--train.output_dir={run}", "--logging.tracker=none"]
    done, seconds = timed(args, tmp_path, hub_env(tmp_path, endpoint))
    one_line(done, "could not be reached", endpoint, reason, "HF_HUB_OFFLINE=1", "--data.train_files")
    assert "Retrying" not in done.stdout + done.stderr
    assert seconds < 40, f"{seconds:.0f}s"  # the Hub client's own retries: 25 s refused, over 6 minutes silent
    assert not run.exists()


@pytest.mark.slow
def test_push_to_a_hub_that_cannot_be_reached_fails_in_one_line_and_keeps_the_folder(tmp_path, unreachable, exported):
    endpoint, reason = unreachable
    model = exported
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    env = {**hub_env(tmp_path, endpoint), "HF_TOKEN": "hf_test"}
    done, seconds = timed(["--model", str(model), "--repo", "someone/sentiment"], tmp_path, env, "trainer.push")
    one_line(done, "pushing to someone/sentiment failed", "could not be reached", endpoint, reason)
    assert seconds < 40, f"{seconds:.0f}s"
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


@pytest.mark.slow
def test_a_run_whose_wandb_server_never_answers_trains_and_logs_offline(trained_without_wandb):
    done, seconds, run = trained_without_wandb
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    warnings = [line for line in done.stdout.splitlines() if "W&B" in line]
    assert len(warnings) == 1, done.stdout
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), sorted((run / "wandb").iterdir())
    assert warnings[0].startswith("warning: W&B could not be reached")
    assert f"wandb sync {offline[0]}" in warnings[0] and "WANDB_MODE=offline" in warnings[0]
    assert (run / "final" / "model.safetensors").is_file()
    assert seconds < 100, f"{seconds:.0f}s"  # W&B's own wait alone is 90 s, and then the run died


def test_wandb_gets_a_bounded_start_unless_told_otherwise(tmp_path, monkeypatch):
    for name in ("WANDB_INIT_TIMEOUT", "WANDB_MODE", "WANDB_SILENT", "WANDB_CONSOLE"):  # restored afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    tracker_setup(LoggingConfig(tracker="wandb"), tmp_path)
    assert os.environ["WANDB_INIT_TIMEOUT"] == str(WANDB_INIT_TIMEOUT_S) and WANDB_INIT_TIMEOUT_S <= 30
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "120")
    tracker_setup(LoggingConfig(tracker="wandb"), tmp_path)
    assert os.environ["WANDB_INIT_TIMEOUT"] == "120"
    # Without a key and without WANDB_MODE, W&B logs offline as before, and nothing waits.
    monkeypatch.delenv("WANDB_API_KEY")
    _, _, note = tracker_setup(LoggingConfig(tracker="wandb"), tmp_path)
    assert os.environ["WANDB_MODE"] == "offline" and "no API key found" in note
