"""Operator commands: one production process each, and the database chores."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from application.users import EmailTaken, InvalidEmail
from domain.errors import InvalidAmount
from infrastructure.logging import configure_logging
from infrastructure.settings import Settings
from interfaces.bootstrap import PROJECTIONS, REACTIONS, Container, build, load_settings
from interfaces.cli.launch import Launcher
from projections import admin
from projections.runner import Wakeups


class CommandError(Exception):
    pass


def container(*, run_migrations: bool = True) -> Container:
    return build(load_settings(), reactions=REACTIONS, run_migrations=run_migrations)


def run_until_signalled(workers: list[Any], target: Callable[[Any], None]) -> int:
    """Runs ``target(worker)`` on a thread per worker until SIGINT/SIGTERM, then stops them."""
    threads = [threading.Thread(target=target, args=(w,), daemon=True) for w in workers]

    def stop(*_: object) -> None:
        for worker in workers:
            worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
    return 0


def migrate(_: argparse.Namespace) -> int:
    from infrastructure.migrations import migrate as apply  # noqa: PLC0415

    settings = load_settings()
    for name in apply(settings.urls()[0]):
        print(f"applied {name}")
    c = Container(settings)
    try:
        c.prepare_read_side()
    finally:
        c.close()
    return 0


def api(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    settings = load_settings()
    settings.export()  # the factory (and each uvicorn worker) reads them from the environment
    uvicorn.run(
        "interfaces.http.app:app_from_environment",
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        workers=args.workers,
        log_config=None,
        access_log=False,
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    launcher = Launcher(
        load_settings(),
        worker_processes=args.processes,
        worker_threads=args.threads,
        worker_queues=tuple(args.queues or ()),
    )
    launcher.exec("worker")


def simulator(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from infrastructure.simulator.app import create_simulator  # noqa: PLC0415

    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        create_simulator(latency_scale=args.latency_scale),
        host="127.0.0.1",
        port=args.port or settings.simulator_port,
        log_config=None,
        access_log=False,
    )
    return 0


def dispatcher(_: argparse.Namespace) -> int:
    """The dispatchers and, beside them, the scheduler (parked work, slots, deadlines) and the
    webhook sender."""
    c = container()
    return run_until_signalled(
        [*c.dispatchers(), c.scheduler(), c.webhook_sender()], lambda d: d.run_forever()
    )


def projections_run(args: argparse.Namespace) -> int:
    names = args.names or list(PROJECTIONS)
    unknown = set(names) - set(PROJECTIONS)
    if unknown:
        raise CommandError(f"unknown projection(s): {', '.join(sorted(unknown))}")
    c = container()
    runners = [c.projection(n) for n in names]
    # one LISTEN connection for all of them (a connection each would add one per projection)
    wakeups = Wakeups(c.database_url, sorted({r.channel for r in runners if r.channel}))
    wakeups.start()
    return run_until_signalled(runners, lambda r: r.run_forever(wakeups=wakeups))


def projections_status(_: argparse.Namespace) -> int:
    c = container()
    print(
        f"{'projection':<12} {'upstream':<10} {'position':>10} {'head':>10} "
        f"{'lag events':>11} {'lag seconds':>12}"
    )
    for name in PROJECTIONS:
        s = admin.status(c.projection(name))
        print(
            f"{s.name:<12} {s.upstream:<10} {s.position:>10} {s.head:>10} "
            f"{s.lag_events:>11} {s.lag_seconds:>12.1f}"
        )
    return 0


def projections_rebuild(args: argparse.Namespace) -> int:
    if args.name not in PROJECTIONS:
        raise CommandError(f"unknown projection {args.name!r}; known: {', '.join(PROJECTIONS)}")
    if not getattr(PROJECTIONS[args.name], "rebuildable", True):
        raise CommandError(
            f"{args.name} holds delivery state (what was sent, when): rebuilding it from the "
            "logs would send everything again, so it is not rebuilt"
        )
    c = container()
    live = c.projection(args.name)
    fresh = c.projection(args.name, schema=f"{live.view.schema}_rebuild")

    def progress(position: int, head: int) -> None:
        percent = 100.0 * position / head if head else 100.0
        print(f"\rrebuilding {args.name}: {position}/{head} ({percent:5.1f}%)", end="", flush=True)

    position = admin.rebuild(live, fresh, progress)
    print(f"\nrebuilt {args.name} up to notification {position}; swapped in")
    return 0


def partitions_ensure(args: argparse.Namespace) -> int:
    """Creates the months ahead of every partitioned read table, and drops the months of the
    live feeds that ended more than ``PIXEVO_FEED_RETENTION_DAYS`` ago (the event store and
    every other read table keep everything)."""
    c = container()
    for name in PROJECTIONS:
        c.projection(name).start()  # its tables exist before their partitions
    with c.pool.connection() as conn:
        for name, view_class in PROJECTIONS.items():
            for table in view_class.partitioned_tables:
                row = conn.execute(
                    "SELECT public.pixevo_ensure_monthly_partitions(%s::regclass, 1, %s)",
                    [f"{view_class.live_schema()}.{table}", args.months_ahead],
                ).fetchone()
                print(f"{name}.{table}: {row[0] if row else 0} partition(s) created")
        cutoff = datetime.now(UTC) - timedelta(days=c.settings.feed_retention_days)
        for name, view_class in PROJECTIONS.items():
            for table in view_class.retained_tables:
                row = conn.execute(
                    "SELECT public.pixevo_drop_partitions_before(%s::regclass, %s)",
                    [f"{view_class.live_schema()}.{table}", cutoff],
                ).fetchone()
                print(
                    f"{name}.{table}: {row[0] if row else 0} partition(s) ended before "
                    f"{cutoff:%Y-%m-%d} dropped"
                )
    return 0


def users_create(args: argparse.Namespace) -> int:
    c = container()
    try:
        created = c.users.create(args.email, args.credits, admin=args.admin)
    except (EmailTaken, InvalidEmail, InvalidAmount) as error:
        raise CommandError(str(error)) from None
    print(json.dumps({"user_id": str(created.user_id), "api_key": created.api_key}))
    return 0
