"""The ``webhook`` actuator: each scale request POSTed as JSON, signed with HMAC-SHA256."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import TYPE_CHECKING

# httpx appears only in node_agent/client.py elsewhere (STYLE.md): the webhook and kubernetes
# actuators are the control plane's only outbound HTTP clients, so they live here.
import httpx
import orjson

from control_plane.capacity.actuators.delivery import Delivery, retryable
from control_plane.db.engine import Database
from control_plane.settings import Settings, SettingsError

if TYPE_CHECKING:
    from control_plane.capacity.actuators import ScaleAction

log = logging.getLogger("krako.autoscaler")


def sign(secret: str, body: bytes) -> str:
    """The ``X-Krako-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookActuator(Delivery):
    """POSTs each scale request (``ScaleAction.body()``) to ``url``, signed with HMAC-SHA256
    over the exact body bytes (``X-Krako-Signature: sha256=<hex>``). Receivers can
    de-duplicate on ``event_id`` (also the ``X-Krako-Event-Id`` header): a request may arrive
    more than once. 5xx, 408, 425, 429 and network errors are retried; other 4xx are not.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        redeliver_after_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            retries=retries,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
            redeliver_after_s=redeliver_after_s,
        )
        self.url = url
        self.secret = secret
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), transport=transport)

    def _close_client(self) -> None:
        self._client.close()

    def _attempt(self, action: ScaleAction) -> str:
        body = orjson.dumps(action.body(), option=orjson.OPT_SORT_KEYS)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "krako-autoscaler",
            "X-Krako-Event-Id": action.event_id,
            "X-Krako-Signature": sign(self.secret, body),
        }
        try:
            r = self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("webhook %s: %s failed: %s", self.url, action.event_id, exc)
            return "retry"
        if r.is_success:
            return "ok"
        retry = retryable(r.status_code)
        log.warning(
            "webhook %s answered %d to %s%s",
            self.url,
            r.status_code,
            action.event_id,
            "" if retry else "; not retrying",
        )
        return "retry" if retry else "fail"


def from_settings(settings: Settings, db: Database) -> WebhookActuator:
    """``KRAKO_AUTOSCALER_ACTUATOR=webhook``: needs a URL and a secret (always signed)."""
    webhook = settings.autoscaler.webhook
    if not webhook.url:
        raise SettingsError("KRAKO_AUTOSCALER_ACTUATOR=webhook needs KRAKO_AUTOSCALER_WEBHOOK_URL")
    if not webhook.secret:
        raise SettingsError(
            "KRAKO_AUTOSCALER_ACTUATOR=webhook needs KRAKO_AUTOSCALER_WEBHOOK_SECRET "
            "(requests are always signed)"
        )
    return WebhookActuator(
        webhook.url,
        webhook.secret,
        timeout_s=webhook.timeout_s,
        retries=webhook.retries,
        backoff_s=webhook.backoff_s,
    )
