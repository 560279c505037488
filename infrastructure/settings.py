"""Settings, read once from the environment (and nowhere else: this is the one module that reads
or writes ``os.environ``; a child process's environment is built here too).

PIXEVO_DATABASE_URL       PostgreSQL URL; unset: an embedded server in the data dir
PIXEVO_REDIS_URL          Redis URL; unset: an embedded server in the data dir
PIXEVO_DATA_DIR           embedded servers' data, the admin key (default ./.pixevo)
PIXEVO_HTTP_HOST / _PORT  where the API listens (default 127.0.0.1 / 8000)
PIXEVO_PUBLIC_URL         the API's base URL as providers reach it (signed links to image
                          inputs); default http://<host>:<port> of the above
PIXEVO_LOG_FORMAT         console (readable, default) or json (production)
PIXEVO_LOG_LEVEL          a logging level name (default INFO)
PIXEVO_REDIS_NAMESPACE    prefix of Redis keys and of Dramatiq queues (default pixevo)
PIXEVO_PROJECTION_BATCH   events per projection transaction (default 2000)
PIXEVO_SIMULATOR_PORT     where ``pixevo up`` runs the provider simulator (default 8001)
PIXEVO_PROVIDER_<NAME>_URL / _KEY   a provider's base URL and API key (default: the simulator)
PIXEVO_STREAM_SECRET      signs stream tokens; unset: one made in the data dir
PIXEVO_SSE_HEARTBEAT_S    seconds between keep-alive comments on live feeds (default 15)
PIXEVO_WORKER_HEARTBEAT_TIMEOUT_S  a worker silent this long is taken for dead and its messages
                          run elsewhere (default 3, at least 2; the same on every worker)
PIXEVO_MODERATION_NSFW_THRESHOLD   classifier score that blocks an image (default 0.8)
PIXEVO_MODERATION_BLOCKED_BILLING  waive (default) or charge: is a blocked generation billed
PIXEVO_MODERATION_RULES            a prompt rules TOML file (default: the shipped rules)
PIXEVO_CLASSIFIER_URL              the image classifier (default: the simulator's)
PIXEVO_DEFER_LIMIT_S      how long a deferred generation waits at most (default 3600)
PIXEVO_DEADLINE_MARGIN_S  what any other status gets beyond its model's total timeout (60)
PIXEVO_USER_CONCURRENCY   a user's generations at providers at once (default 8)
PIXEVO_RATE_LIMIT_PER_S   work-creating requests a user may make per second (default 10)
PIXEVO_RATE_LIMIT_BURST   how many of them at once, above that rate (default 20)
PIXEVO_CORS_ORIGINS       comma-separated origins a browser may call the API from (default none)
PIXEVO_MARKETPLACE_FEE    the platform's share of a marketplace install's price (default 0.20)
PIXEVO_FEED_RETENTION_DAYS  days the live feeds' stored messages are kept for resuming (30)
PIXEVO_TRACING            on (default) or off: trace ids on log lines and responses, spans made
PIXEVO_TRACE_SAMPLE_RATIO share of new traces recorded and exported, 0..1 (default 1: all)
PIXEVO_TRACE_SQL          on or off (default): a span per SQL statement inside traced work
PIXEVO_OTLP_ENDPOINT      export spans by OTLP/HTTP to this collector (e.g. http://otel:4318)
PIXEVO_TRACE_FILE         also append spans to this file as JSON lines (development, tests)
PIXEVO_SERVICE_NAME       the process's service name in traces (the launcher sets pixevo-<process>)
PIXEVO_METRICS_DIR        where the processes the launcher starts keep their Prometheus samples,
                          for the API's /metrics to sum (default <data dir>/metrics; set as
                          PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads at import)
PIXEVO_WEBHOOKS_ALLOW_PRIVATE    1: webhook endpoints on private/loopback addresses are allowed
PIXEVO_WEBHOOK_RETRY_SCHEDULE    comma-separated seconds of a delivery's attempts (default
                                 0,5,300,1800,7200,18000,36000,36000: about 27 h)
PIXEVO_WEBHOOK_DISABLE_AFTER_S   continuous failure after which an endpoint is disabled (5 days)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

LOG_FORMATS = ("console", "json")
SWITCH = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}
BLOCKED_BILLING = ("waive", "charge")
#: Seconds before each attempt of a webhook delivery (Standard Webhooks' schedule: ~27 h).
WEBHOOK_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class SettingsError(ValueError):
    pass


def _public_url(value: str | None) -> str | None:
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise SettingsError(f"PIXEVO_PUBLIC_URL must be an http(s) URL, not {value!r}")
    return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".pixevo")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    public_url: str | None = None
    log_format: str = "console"
    log_level: str = "INFO"
    redis_namespace: str = "pixevo"
    projection_batch: int = 2000
    simulator_port: int = 8001
    stream_secret: str | None = None
    sse_heartbeat_s: float = 15.0
    worker_heartbeat_timeout_s: float = 3.0
    nsfw_threshold: float = 0.8
    blocked_billing: str = "waive"
    moderation_rules: Path | None = None
    classifier_url: str | None = None
    providers: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (url, key)
    defer_limit_s: float = 3600.0
    deadline_margin_s: float = 60.0
    user_concurrency: int = 8
    rate_limit_per_s: float = 10.0
    rate_limit_burst: int = 20
    cors_origins: tuple[str, ...] = ()
    marketplace_fee: Decimal = Decimal("0.20")
    feed_retention_days: int = 30
    tracing: bool = True
    trace_sql: bool = False
    trace_sample_ratio: float = 1.0
    otlp_endpoint: str | None = None
    trace_file: Path | None = None
    service_name: str = "pixevo"
    metrics_dir: Path | None = None
    #: ``PROMETHEUS_MULTIPROC_DIR`` of this process (prometheus_client's own variable).
    prometheus_dir: Path | None = None
    webhooks_allow_private: bool = False
    webhook_retry_schedule: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE
    webhook_disable_after_s: float = 5 * 86400.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        log_format = env.get("PIXEVO_LOG_FORMAT", "console").lower()
        if log_format not in LOG_FORMATS:
            raise SettingsError(
                f"PIXEVO_LOG_FORMAT must be one of {LOG_FORMATS}, not {log_format!r}"
            )
        port = _count(env, "PIXEVO_HTTP_PORT", "8000", 65535, "a TCP port")
        batch = _count(env, "PIXEVO_PROJECTION_BATCH", "2000", 100_000)
        sim_port = _count(env, "PIXEVO_SIMULATOR_PORT", "8001", 65535, "a TCP port")
        nsfw_threshold = _number(
            env, "PIXEVO_MODERATION_NSFW_THRESHOLD", "0.8", 0, 1, "between 0 and 1"
        )
        billing = env.get("PIXEVO_MODERATION_BLOCKED_BILLING", "waive").lower()
        if billing not in BLOCKED_BILLING:
            raise SettingsError(
                f"PIXEVO_MODERATION_BLOCKED_BILLING must be one of {BLOCKED_BILLING}, "
                f"not {billing!r}"
            )
        rules = env.get("PIXEVO_MODERATION_RULES")
        heartbeat = _seconds(env, "PIXEVO_SSE_HEARTBEAT_S", "15", 0.1, 300)
        defer_limit = _seconds(env, "PIXEVO_DEFER_LIMIT_S", "3600", 1, 7 * 86400)
        margin = _seconds(env, "PIXEVO_DEADLINE_MARGIN_S", "60", 0, 86400)
        concurrency = _count(env, "PIXEVO_USER_CONCURRENCY", "8", 10_000)
        per_s = _number(
            env, "PIXEVO_RATE_LIMIT_PER_S", "10", 1e-9, 1_000_000, "above 0 (per second)"
        )
        burst = _count(env, "PIXEVO_RATE_LIMIT_BURST", "20", 1_000_000)
        providers = {
            key[len("PIXEVO_PROVIDER_") : -len("_URL")].lower(): (
                value,
                env.get(key[: -len("_URL")] + "_KEY", ""),
            )
            for key, value in env.items()
            if key.startswith("PIXEVO_PROVIDER_") and key.endswith("_URL")
        }
        tracing = env.get("PIXEVO_TRACING", "on").lower()
        if tracing not in SWITCH:
            raise SettingsError(f"PIXEVO_TRACING must be on or off, not {tracing!r}")
        trace_sql = env.get("PIXEVO_TRACE_SQL", "off").lower()
        if trace_sql not in SWITCH:
            raise SettingsError(f"PIXEVO_TRACE_SQL must be on or off, not {trace_sql!r}")
        otlp = env.get("PIXEVO_OTLP_ENDPOINT") or None
        if otlp and not otlp.startswith(("http://", "https://")):
            raise SettingsError(f"PIXEVO_OTLP_ENDPOINT must be an http(s) URL, not {otlp!r}")
        trace_file, metrics_dir = env.get("PIXEVO_TRACE_FILE"), env.get("PIXEVO_METRICS_DIR")
        return cls(
            database_url=env.get("PIXEVO_DATABASE_URL") or None,
            redis_url=env.get("PIXEVO_REDIS_URL") or None,
            data_dir=Path(env.get("PIXEVO_DATA_DIR") or ".pixevo").absolute(),
            http_host=env.get("PIXEVO_HTTP_HOST", "127.0.0.1"),
            http_port=port,
            public_url=_public_url(env.get("PIXEVO_PUBLIC_URL")),
            log_format=log_format,
            log_level=env.get("PIXEVO_LOG_LEVEL", "INFO").upper(),
            redis_namespace=env.get("PIXEVO_REDIS_NAMESPACE", "pixevo"),
            projection_batch=batch,
            simulator_port=sim_port,
            stream_secret=env.get("PIXEVO_STREAM_SECRET") or None,
            sse_heartbeat_s=heartbeat,
            worker_heartbeat_timeout_s=_seconds(
                env, "PIXEVO_WORKER_HEARTBEAT_TIMEOUT_S", "3", 2, 600
            ),
            nsfw_threshold=nsfw_threshold,
            blocked_billing=billing,
            moderation_rules=Path(rules).absolute() if rules else None,
            classifier_url=env.get("PIXEVO_CLASSIFIER_URL") or None,
            providers=providers,
            defer_limit_s=defer_limit,
            deadline_margin_s=margin,
            user_concurrency=concurrency,
            rate_limit_per_s=per_s,
            rate_limit_burst=burst,
            cors_origins=_origins(env.get("PIXEVO_CORS_ORIGINS", "")),
            marketplace_fee=_fraction(env, "PIXEVO_MARKETPLACE_FEE", "0.20"),
            feed_retention_days=_count(
                env, "PIXEVO_FEED_RETENTION_DAYS", "30", 36_500, "a number of days, 1..36500"
            ),
            tracing=SWITCH[tracing],
            trace_sql=SWITCH[trace_sql],
            trace_sample_ratio=_number(
                env, "PIXEVO_TRACE_SAMPLE_RATIO", "1", 0, 1, "a fraction between 0 and 1"
            ),
            otlp_endpoint=otlp,
            trace_file=Path(trace_file).absolute() if trace_file else None,
            service_name=env.get("PIXEVO_SERVICE_NAME") or "pixevo",
            metrics_dir=Path(metrics_dir).absolute() if metrics_dir else None,
            prometheus_dir=Path(env["PROMETHEUS_MULTIPROC_DIR"]).absolute()
            if env.get("PROMETHEUS_MULTIPROC_DIR")
            else None,
            webhooks_allow_private=_flag(env, "PIXEVO_WEBHOOKS_ALLOW_PRIVATE"),
            webhook_retry_schedule=_schedule(env.get("PIXEVO_WEBHOOK_RETRY_SCHEDULE")),
            webhook_disable_after_s=_seconds(
                env, "PIXEVO_WEBHOOK_DISABLE_AFTER_S", str(5 * 86400), 0.001, 365 * 86400
            ),
        )

    def urls(self) -> tuple[str, str]:
        """(database URL, Redis URL), once :func:`infrastructure.embedded.resolve` filled them."""
        if not (self.database_url and self.redis_url):
            raise SettingsError("the database and Redis URLs are not resolved yet")
        return self.database_url, self.redis_url

    def provider(self, name: str) -> tuple[str, str]:
        """(base URL, API key) of a provider: configured, or the simulator's route for it."""
        default = (f"http://127.0.0.1:{self.simulator_port}/{name}", f"sim-{name}-key")
        return self.providers.get(name, default)

    def api_url(self) -> str:
        """The API's base URL for those outside it (a provider fetching a signed link)."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.http_host in ("", "0.0.0.0", "::") else self.http_host  # noqa: S104
        return f"http://{host}:{self.http_port}"

    def classifier(self) -> str:
        """The image classifier's base URL: configured, or the simulator's moderation route."""
        return self.classifier_url or f"http://127.0.0.1:{self.simulator_port}/moderation"

    def metrics_path(self) -> Path:
        """Where this host's processes keep their Prometheus samples."""
        return self.metrics_dir or self.data_dir / "metrics"

    def with_urls(self, database_url: str, redis_url: str) -> Settings:
        return replace(self, database_url=database_url, redis_url=redis_url)

    def as_env(self) -> dict[str, str]:
        """The variables that give a child process these same settings."""
        env = {
            "PIXEVO_DATA_DIR": str(self.data_dir),
            "PIXEVO_HTTP_HOST": self.http_host,
            "PIXEVO_HTTP_PORT": str(self.http_port),
            "PIXEVO_LOG_FORMAT": self.log_format,
            "PIXEVO_LOG_LEVEL": self.log_level,
            "PIXEVO_REDIS_NAMESPACE": self.redis_namespace,
            "PIXEVO_PROJECTION_BATCH": str(self.projection_batch),
            "PIXEVO_SIMULATOR_PORT": str(self.simulator_port),
        }
        if self.public_url:
            env["PIXEVO_PUBLIC_URL"] = self.public_url
        for name, (url, key) in self.providers.items():
            env[f"PIXEVO_PROVIDER_{name.upper()}_URL"] = url
            env[f"PIXEVO_PROVIDER_{name.upper()}_KEY"] = key
        if self.stream_secret:
            env["PIXEVO_STREAM_SECRET"] = self.stream_secret
        env["PIXEVO_SSE_HEARTBEAT_S"] = str(self.sse_heartbeat_s)
        env["PIXEVO_WORKER_HEARTBEAT_TIMEOUT_S"] = str(self.worker_heartbeat_timeout_s)
        env["PIXEVO_MODERATION_NSFW_THRESHOLD"] = str(self.nsfw_threshold)
        env["PIXEVO_MODERATION_BLOCKED_BILLING"] = self.blocked_billing
        if self.moderation_rules:
            env["PIXEVO_MODERATION_RULES"] = str(self.moderation_rules)
        if self.classifier_url:
            env["PIXEVO_CLASSIFIER_URL"] = self.classifier_url
        env["PIXEVO_DEFER_LIMIT_S"] = str(self.defer_limit_s)
        env["PIXEVO_DEADLINE_MARGIN_S"] = str(self.deadline_margin_s)
        env["PIXEVO_USER_CONCURRENCY"] = str(self.user_concurrency)
        env["PIXEVO_RATE_LIMIT_PER_S"] = str(self.rate_limit_per_s)
        env["PIXEVO_RATE_LIMIT_BURST"] = str(self.rate_limit_burst)
        if self.cors_origins:
            env["PIXEVO_CORS_ORIGINS"] = ",".join(self.cors_origins)
        env["PIXEVO_MARKETPLACE_FEE"] = str(self.marketplace_fee)
        env["PIXEVO_FEED_RETENTION_DAYS"] = str(self.feed_retention_days)
        env["PIXEVO_TRACING"] = "on" if self.tracing else "off"
        env["PIXEVO_TRACE_SQL"] = "on" if self.trace_sql else "off"
        env["PIXEVO_TRACE_SAMPLE_RATIO"] = str(self.trace_sample_ratio)
        if self.otlp_endpoint:
            env["PIXEVO_OTLP_ENDPOINT"] = self.otlp_endpoint
        if self.trace_file:
            env["PIXEVO_TRACE_FILE"] = str(self.trace_file)
        if self.metrics_dir:
            env["PIXEVO_METRICS_DIR"] = str(self.metrics_dir)
        env["PIXEVO_WEBHOOKS_ALLOW_PRIVATE"] = "1" if self.webhooks_allow_private else "0"
        env["PIXEVO_WEBHOOK_RETRY_SCHEDULE"] = ",".join(
            f"{s:g}" for s in self.webhook_retry_schedule
        )
        env["PIXEVO_WEBHOOK_DISABLE_AFTER_S"] = str(self.webhook_disable_after_s)
        if self.database_url:
            env["PIXEVO_DATABASE_URL"] = self.database_url
        if self.redis_url:
            env["PIXEVO_REDIS_URL"] = self.redis_url
        return env

    def process_env(self, **extra: str) -> dict[str, str]:
        """A child process's whole environment: this process's, these settings, then ``extra``."""
        return {**os.environ, **self.as_env(), **extra}

    def export(self) -> None:
        """Puts these settings into this process's environment, for what reads it after us
        (a factory uvicorn calls, the workers it spawns)."""
        os.environ.update(self.as_env())


def _fraction(env: Mapping[str, str], name: str, default: str) -> Decimal:
    """The variable as an exact decimal fraction in 0..1 (a share of a price)."""
    value = env.get(name, default)
    try:
        fraction = Decimal(value)
    except InvalidOperation:
        fraction = Decimal("NaN")
    if not (fraction.is_finite() and 0 <= fraction <= 1):
        raise SettingsError(f"{name} must be a fraction between 0 and 1, not {value!r}")
    return fraction


def _number(
    env: Mapping[str, str], name: str, default: str, low: float, high: float, what: str
) -> float:
    """The variable as a number in ``low..high``, or an error naming it and ``what`` it takes."""
    value = env.get(name, default)
    try:
        number = float(value)
    except ValueError:
        number = float("nan")  # fails the range check below
    if not low <= number <= high:
        raise SettingsError(f"{name} must be {what}, not {value!r}")
    return number


def _seconds(env: Mapping[str, str], name: str, default: str, low: float, high: float) -> float:
    return _number(env, name, default, low, high, f"{low:g}..{high:g} seconds")


def _count(env: Mapping[str, str], name: str, default: str, high: int, what: str = "") -> int:
    """The variable as a whole number in ``1..high``."""
    value = env.get(name, default)
    if not value.isdigit() or not 0 < int(value) <= high:
        raise SettingsError(f"{name} must be {what or f'1..{high}'}, not {value!r}")
    return int(value)


def _origins(value: str) -> tuple[str, ...]:
    """``https://app.example.com,http://localhost:3000`` as origins (scheme://host[:port])."""
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise SettingsError(
                f"PIXEVO_CORS_ORIGINS takes origins like https://app.example.com, not {origin!r}"
            )
    return origins


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "0").strip().lower()
    if value not in ("", "0", "1", "true", "false", "yes", "no"):
        raise SettingsError(f"{name} must be 1 or 0, not {value!r}")
    return value in ("1", "true", "yes")


def _schedule(value: str | None) -> tuple[float, ...]:
    """``0,5,300`` as the seconds before each attempt of a webhook delivery."""
    if value is None or not value.strip():
        return WEBHOOK_RETRY_SCHEDULE
    try:
        delays = tuple(float(part) for part in value.split(","))
    except ValueError:
        delays = ()
    if not delays or len(delays) > 100 or not all(0 <= d <= 7 * 86400 for d in delays):
        raise SettingsError(
            "PIXEVO_WEBHOOK_RETRY_SCHEDULE must be 1 to 100 comma-separated delays in seconds "
            f"(each 0..604800), not {value!r}"
        )
    return delays
