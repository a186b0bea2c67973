"""Network calls with a bound: a Hub that cannot be reached fails in seconds, not minutes.

Every request ``huggingface_hub`` sends (model downloads and pushes, and the ``datasets`` loads
that go through it) gets a time limit where it has none of its own: ``HF_HUB_ETAG_TIMEOUT``
seconds (10) to connect and ``HF_HUB_DOWNLOAD_TIMEOUT`` (10) for each answer. A host that did not
connect or answer within them is not asked again for ``FORGET_AFTER_S`` seconds: the library's
retries (six tries over minutes, each logging a line) then fail at once, as they do offline. W&B
has its own bound (``WANDB_INIT_TIMEOUT``, see ``trainer.training.tracking``).

This is set up through ``huggingface_hub.set_client_factory``, the library's knob for a client of
one's own, so it replaces a factory set before it.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

FORGET_AFTER_S = 60.0  # after that a host that failed is tried again (a long-lived process, a notebook)
# The steps of a request before any answer came: a host that fails in one of them is not there.
_CONNECTING = {"connect_tcp", "connect_unix_socket", "start_tls", "setup_socks5_connection"}
_AWAITING = {"send_request_headers", "receive_response_headers"}

_failed: dict[str, tuple[float, str]] = {}  # origin (scheme://host:port) -> (when, why)
_install_lock = threading.Lock()
_installed = False


def _origin(url) -> str:
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}"


def unreachable_hosts() -> dict[str, str]:
    """Hosts (``scheme://host:port``) that did not connect or answer lately, and why ("no answer
    within 10 s", "[Errno 111] Connection refused")."""
    now = time.monotonic()
    return {origin: why for origin, (when, why) in list(_failed.items()) if now - when < FORGET_AFTER_S}


def _why(step: str, exc: BaseException, timeouts: dict) -> str:
    if type(exc).__name__.endswith("Timeout"):
        seconds = timeouts.get("connect" if step in _CONNECTING else "read")
        what = "no connection" if step in _CONNECTING else "no answer"
        return f"{what} within {seconds:g} s" if seconds else what
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _watch(origin: str, timeouts: dict, bounds: dict, then):
    """A ``trace`` extension (httpcore's hook into each step of a request) that records ``origin``
    as unreachable when a step before the answer fails: a connection refused or not found, or a
    wait of at least ``bounds`` that timed out. A shorter wait the library chose for a call it can
    do without proves nothing; nor does a connection the server closed while idle (a "disconnected"
    error), which the library's retry handles."""

    def trace(event: str, info: dict) -> None:
        if then is not None:
            then(event, info)
        step, _, outcome = event.rpartition(".")
        step = step.rpartition(".")[2]
        exc = info.get("exception")
        if outcome != "failed" or not isinstance(exc, Exception) or (step not in _CONNECTING | _AWAITING):
            return
        if type(exc).__name__.endswith("Timeout"):
            phase = "connect" if step in _CONNECTING else "read"
            if (timeouts.get(phase) or 0) < bounds[phase]:
                return
        elif step in _AWAITING:
            return
        _failed[origin] = (time.monotonic(), _why(step, exc, timeouts))

    trace.bounds_hub_requests = True
    return trace


def _bound(request) -> None:
    """A request hook: refuse a host that just failed; give the request time limits and a trace."""
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    origin = _origin(request.url)
    if why := unreachable_hosts().get(origin):
        # Not a timeout or connection error: those the library retries, sleeping and logging each time.
        raise OfflineModeIsEnabled(f"{origin} could not be reached a moment ago ({why}); not asking again")
    bounds = {"connect": constants.HF_HUB_ETAG_TIMEOUT, "read": constants.HF_HUB_DOWNLOAD_TIMEOUT}
    timeouts = dict(request.extensions.get("timeout") or {})
    timeouts["connect"] = min(timeouts.get("connect") or bounds["connect"], bounds["connect"])
    for phase in ("read", "write", "pool"):
        timeouts[phase] = timeouts.get(phase) or bounds["read"]
    request.extensions["timeout"] = timeouts
    trace = request.extensions.get("trace")
    if not getattr(trace, "bounds_hub_requests", False):  # a redirect keeps its request's extensions
        request.extensions["trace"] = _watch(origin, timeouts, bounds, trace)


def bound_hub_requests() -> None:
    """Give every ``huggingface_hub`` request of this process time limits (see the module's
    docstring); call it before any Hub call. Only the first call does anything."""
    global _installed
    with _install_lock:
        if _installed:
            return
        import httpx2
        import huggingface_hub

        template = huggingface_hub.get_session()  # the library's own client: its hooks (offline mode, request ids)
        hooks = template.event_hooks
        follow_redirects, timeout = template.follow_redirects, template.timeout

        def client() -> httpx2.Client:
            return httpx2.Client(
                event_hooks={"request": [*hooks["request"], _bound], "response": list(hooks["response"])},
                follow_redirects=follow_redirects,
                timeout=timeout,
            )

        huggingface_hub.set_client_factory(client)
        _installed = True


def hub_unreachable_reason() -> str | None:
    """Why the Hub (``HF_ENDPOINT``) could not be reached lately ("http://host:8080: no answer within
    10 s"), if it could not. Other hosts (a download counter, a CDN) are left out: their failure
    says nothing of the Hub's."""
    from huggingface_hub import constants

    endpoint = _origin(constants.ENDPOINT)
    why = unreachable_hosts().get(endpoint)
    return f"{endpoint}: {why}" if why else None
