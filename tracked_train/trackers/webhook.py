"""Webhook alerts: a JSON POST when a run starts, evaluates, misbehaves and stops.

``--tracker webhook=URL``, else ``tracking.webhook.url``, else the
``TRACKED_TRAIN_WEBHOOK_URL`` environment variable. The URL is a secret (chat
webhooks carry their token in the path): it is redacted from every record and
never logged, so on resume it must come from the environment or ``--set``.
``tracking.webhook.format`` shapes the body: ``json`` (the event object),
``discord`` (``{"content": text}``) or ``slack`` (``{"text": text}``).

The training thread only appends to a bounded queue; one sender thread POSTs
with retries and backoff. A dead or hanging endpoint costs the run nothing but
the bounded wait at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ..background import Background
from ..early_stopping import Monitor
from ..errors import UserError
from ..redact import REDACTED
from .base import Outcome, RunInfo, Tracker, settings_of

log = logging.getLogger("tracked_train")

ENV_URL = "TRACKED_TRAIN_WEBHOOK_URL"
QUEUE_MAX = 1000
TRIES, FIRST_BACKOFF_S, REQUEST_TIMEOUT_S = 3, 0.5, 5.0
SPIKE_FACTOR, SPIKE_AFTER_STEPS, SPIKE_EVERY_STEPS = 2.0, 20, 100


def _usable(url: str | None) -> bool:
    return bool(url) and REDACTED not in url  # a resumed run's config holds "***", not the URL


def _where(url: str) -> str:
    """``https://hooks.slack.com/services/T/B/secret`` -> ``https://hooks.slack.com/…``: loggable."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}/…"


def _finite(value: Any) -> Any:
    # JSON has no NaN/Infinity: send them as strings rather than a body the endpoint cannot parse.
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value if not isinstance(value, float) or math.isfinite(value) else str(value)


def _number(value: Any) -> float:
    return math.inf if value is None else float(value)


@dataclass(frozen=True)
class WebhookSettings:
    """``tracking.webhook:``, the webhook tracker's own settings."""

    # Where alerts go (else --tracker webhook=URL or TRACKED_TRAIN_WEBHOOK_URL): a secret, redacted in records.
    url: str | None = field(default=None, metadata={"secret": True})
    format: Literal["json", "discord", "slack"] = "json"  # the body: the event object, or a chat message


class WebhookTracker(Tracker):
    name = "webhook"
    Settings = WebhookSettings

    def __init__(self, url: str | None = None):
        self._arg = url
        self.url = ""
        self.format = "json"
        self._sender: _Sender | None = None
        self._run = ""
        self._monitor: Monitor | None = None  # the run's own early-stopping rule on its monitored metric
        self._min_loss = math.inf
        self._losses_seen = 0
        self._last_spike_step: int | None = None
        self._warned_non_finite = False

    # -- start ---------------------------------------------------------------------------------
    def start(self, run: RunInfo) -> None:
        tc: WebhookSettings = settings_of(self, run)
        url = next((u for u in (self._arg, tc.url, os.environ.get(ENV_URL)) if _usable(u)), None)
        if url is None:
            raise UserError(f"the webhook tracker needs a URL: --tracker webhook=URL, tracking.webhook.url or "
                            f"{ENV_URL} (on resume the recorded URL is redacted: set {ENV_URL})")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise UserError(f"webhook URL {_where(url)!r} is not an http(s) URL; use e.g. https://host/path")
        self.url, self.format, self._run = url, tc.format, run.name
        self._monitor = Monitor(run.monitor, run.mode, run.patience, run.min_delta)
        state = run.resume_state or {}
        if isinstance(state.get("monitor"), dict):
            self._monitor.load_state_dict(state["monitor"])
        elif state.get("best_val_loss") is not None and self._monitor.metric == "val/loss":  # an older state
            self._monitor.best, self._monitor.best_step = float(state["best_val_loss"]), run.start_step
        self._min_loss = _number(state.get("min_train_loss"))
        self._sender = _Sender(url)
        max_steps = run.max_steps
        if run.start_step:
            self._post("resume", run.start_step, f"resumed at step {run.start_step} of {max_steps}",
                       max_steps=max_steps, run_dir=str(run.run_dir.resolve()))
        else:
            self._post("start", 0, f"started ({max_steps} steps)", max_steps=max_steps,
                       run_dir=str(run.run_dir.resolve()))
        log.info("webhook: alerts go to %s (%s)", _where(url), self.format)

    # -- events (training thread: build a dict, append, return) ----------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        pass  # the config is not an alert (and may hold what a chat channel should not see)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        loss = metrics.get("train/loss")
        if loss is not None:
            self._check_train_loss(float(loss), step)
        if self._monitor is not None and self._monitor.metric in metrics:
            self._on_monitor({k: v for k, v in metrics.items() if k.startswith("val/")}, metrics, step)

    def _check_train_loss(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            if not self._warned_non_finite:
                self._warned_non_finite = True
                self._post("anomaly", step, f"train loss is {loss} at step {step}", kind="non_finite_loss",
                           value=loss)
            return
        self._losses_seen += 1
        spiking = (self._losses_seen > SPIKE_AFTER_STEPS and loss > SPIKE_FACTOR * self._min_loss
                   and (self._last_spike_step is None or step - self._last_spike_step >= SPIKE_EVERY_STEPS))
        if spiking:
            self._last_spike_step = step
            self._post("anomaly", step, f"loss spike at step {step}: train loss {loss:.4f} is over "
                       f"{SPIKE_FACTOR:g}x its minimum {self._min_loss:.4f}", kind="loss_spike", value=loss,
                       min_loss=self._min_loss)
        self._min_loss = min(self._min_loss, loss)

    def _on_monitor(self, val: dict[str, float], metrics: dict[str, float], step: int) -> None:
        """An observation of the monitored metric, judged by the same rule that stops the run."""
        m = self._monitor
        m.observe(step, metrics, evaluation=bool(val))
        value = float(metrics[m.metric])
        best = m.best if m.has_best else None
        name = m.metric.replace("/", " ")  # "val loss"
        text = f"step {step}: {name} {value:.4f}" + (" (new best)" if m.improved else
                                                     f" (best {m.best:.4f})" if best is not None else "")
        fields = {f"best_{m.metric.replace('/', '_')}": best, "improved": m.improved}
        if val:
            self._post("eval", step, text, metrics=val, **fields)
        # Half of patience without improvement: a warning while there is still time to act.
        half = (m.patience or 0) // 2
        if half and m.bad_observations == half:
            n = m.bad_observations
            self._post("anomaly", step, f"{name} has not improved for {n} evaluation{'s' * (n > 1)} "
                       f"(patience {m.patience}); best {m.best:.4f}", kind="no_improvement",
                       evals_without_improvement=n, **{k: v for k, v in fields.items() if k != "improved"})

    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        pass  # checkpoints are not alerts

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def finish(self, outcome: Outcome) -> None:
        if self._sender is None:
            return
        s = outcome.stop
        best = ""
        if outcome.best_val_loss is not None:
            best = f" Best val loss {outcome.best_val_loss:.4f} at step {outcome.best_step}."
        self._post("stop", s.step, f"stopped ({s.reason}) at step {s.step}. {s.detail}{best}", reason=s.reason,
                   detail=s.detail, best_val_loss=outcome.best_val_loss, best_step=outcome.best_step,
                   verdict=outcome.verdict, exit_code=s.exit_code)
        self._close()

    def abort(self) -> None:
        if self._sender is not None:
            self._close()

    def _close(self) -> None:
        timeout = float(os.environ.get("TRACKED_TRAIN_WEBHOOK_FLUSH_TIMEOUT", "10"))
        sent, lost = self._sender.close(min(timeout, 10.0))
        if lost:
            log.warning("webhook: %d of %d alerts to %s were not delivered", lost, sent + lost, _where(self.url))
        self._sender = None

    def state(self) -> dict[str, Any]:
        # Running values, so a resumed run's alerts compare against the whole run (never the URL: a secret).
        m = self._monitor
        return {"monitor": m.state_dict() if m is not None else None,
                "best_val_loss": m.best if m is not None and m.metric == "val/loss" and m.has_best else None,
                "min_train_loss": self._min_loss if math.isfinite(self._min_loss) else None}

    def _post(self, event: str, step: int, text: str, **fields: Any) -> None:
        text = f"tracked-train run `{self._run}`: {text}"
        if self.format == "discord":
            body: dict[str, Any] = {"content": text[:1900]}  # Discord refuses content over 2000 characters
        elif self.format == "slack":
            body = {"text": text}
        else:
            body = {"event": event, "run": self._run, "step": step, "time": time.time(), "text": text,
                    **_finite(fields)}
        self._sender.put(body)


def _worth_retrying(e: BaseException) -> bool:
    # A 4xx (but 429, "too many requests") means the endpoint refused this body: resending will not change its mind.
    return isinstance(e, Exception) and not (isinstance(e, urllib.error.HTTPError) and e.code < 500 and e.code != 429)


def _why(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code}"
    return str(getattr(e, "reason", e)) or type(e).__name__  # refused, unreachable, timed out, garbled


class _Sender:
    """POSTs queued bodies on a background thread; a full queue drops its oldest body."""

    def __init__(self, url: str):
        self.url = url
        self.queue: Background[dict[str, Any]] = Background(
            "webhook-sender", self._send, maxsize=QUEUE_MAX, when_full="drop_oldest",
            failure_text=lambda body, e: f"webhook: could not deliver a '{body.get('event', 'message')}' alert "
                                         f"to {_where(self.url)} ({_why(e)}); training continues")

    sent = property(lambda self: self.queue.handled)
    failed = property(lambda self: self.queue.failed)
    dropped = property(lambda self: self.queue.dropped)

    def put(self, body: dict[str, Any]) -> None:
        self.queue.put(body)

    def close(self, timeout_s: float) -> tuple[int, int]:
        """Wait up to ``timeout_s`` for the queue to drain; returns (delivered, not delivered)."""
        # A request still hanging is abandoned with its daemon thread: the run does not wait on it.
        r = self.queue.close(timeout_s)
        return r.handled, r.failed + r.dropped + r.left

    def _send(self, body: dict[str, Any]) -> None:
        """One POST, tried up to TRIES times, FIRST_BACKOFF_S apart and then twice as long each time;
        raises the last error (the sender thread's own pace: training never waits on it)."""
        import tenacity

        from .. import __version__

        data = json.dumps(body, allow_nan=False, default=str).encode()
        # A User-Agent of our own: some hosts (Discord's) refuse Python's default one.
        headers = {"Content-Type": "application/json", "User-Agent": f"tracked-train/{__version__}"}

        def post() -> None:
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
                resp.read()

        # The constants are read here, per body, so that a test may change them.
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(TRIES), wait=tenacity.wait_exponential(multiplier=FIRST_BACKOFF_S),
            retry=tenacity.retry_if_exception(_worth_retrying),
            reraise=True)  # the last error itself, not tenacity's RetryError: the warning names it
        retrying(post)
