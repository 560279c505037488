"""``pixevo``: run the platform and operate it.

pixevo up                               everything, in the foreground (embedded default)
pixevo api | worker | dispatcher        one production process each (the dispatcher's
                                        process also runs the scheduler)
pixevo projections run|status|rebuild   the read side
pixevo migrate | partitions ensure      the database
pixevo users create --email E ...       a user and their API key (JSON on stdout)
pixevo audit ledger USER | verify | run RUN | earnings USER
                                        billing disputes: replay from the event store
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from interfaces.cli import audit, moderation, operate, up
from interfaces.cli.launch import WORKER_THREADS

Command = Callable[[argparse.Namespace], int]


def _audit_commands(sub: Any) -> None:
    audits = sub.add_parser("audit", help="billing audit").add_subparsers(
        dest="action", required=True
    )
    ledger = audits.add_parser("ledger", help="an account's timeline from the event store")
    ledger.add_argument("user_id")
    ledger.add_argument("--at", help="RFC 3339 timestamp: the position at that instant")
    ledger.add_argument("--json", action="store_true")
    ledger.set_defaults(run=audit.ledger)
    audits.add_parser(
        "verify", help="replay every account; compare with credit_balances and earnings"
    ).set_defaults(run=audit.verify)
    earnings = audits.add_parser("earnings", help="a creator's earnings from the event store")
    earnings.add_argument("user_id")
    earnings.add_argument("--at", help="RFC 3339 timestamp: the earnings at that instant")
    earnings.add_argument("--json", action="store_true")
    earnings.set_defaults(run=audit.earnings)
    run = audits.add_parser("run", help="a workflow run's charges, node by node")
    run.add_argument("run_id")
    run.add_argument("--json", action="store_true")
    run.set_defaults(run=audit.workflow_run)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixevo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="run everything in the foreground").set_defaults(run=up.run)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=operate.migrate)
    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(run=operate.api)
    worker = sub.add_parser("worker", help="run Dramatiq workers")
    worker.add_argument("--processes", type=int, default=1)
    worker.add_argument("--threads", type=int, default=WORKER_THREADS)
    worker.add_argument(
        "--queues",
        nargs="+",
        metavar="QUEUE",
        help="only these queues (reactions, images); default: all",
    )
    worker.set_defaults(run=operate.worker)
    sub.add_parser("dispatcher", help="relay events to the workers").set_defaults(
        run=operate.dispatcher
    )
    simulator = sub.add_parser("simulator", help="serve the provider simulator")
    simulator.add_argument("--port", type=int, help="default: PIXEVO_SIMULATOR_PORT")
    simulator.add_argument(
        "--latency-scale",
        type=float,
        default=1.0,
        help="multiply every model's latency (0: instant)",
    )
    simulator.set_defaults(run=operate.simulator)

    projections = sub.add_parser("projections", help="the read side").add_subparsers(
        dest="action", required=True
    )
    run = projections.add_parser("run", help="keep projections up to date")
    run.add_argument("names", nargs="*")
    run.set_defaults(run=operate.projections_run)
    projections.add_parser("status", help="position and lag of each").set_defaults(
        run=operate.projections_status
    )
    rebuild = projections.add_parser("rebuild", help="rebuild one and swap it in")
    rebuild.add_argument("name")
    rebuild.set_defaults(run=operate.projections_rebuild)

    partitions = sub.add_parser("partitions", help="monthly partitions").add_subparsers(
        dest="action", required=True
    )
    ensure = partitions.add_parser("ensure", help="create partitions ahead of time")
    ensure.add_argument("--months-ahead", type=int, default=3)
    ensure.set_defaults(run=operate.partitions_ensure)

    users = sub.add_parser("users", help="users and keys").add_subparsers(
        dest="action", required=True
    )
    create = users.add_parser("create", help="create a user; prints {user_id, api_key}")
    create.add_argument("--email", required=True)
    create.add_argument("--credits", default="0")
    create.add_argument("--admin", action="store_true")
    create.set_defaults(run=operate.users_create)

    _audit_commands(sub)

    moderating = sub.add_parser("moderation", help="moderation").add_subparsers(
        dest="action", required=True
    )
    again = moderating.add_parser(
        "rescreen", help="run the current classifier over past images; record changed verdicts"
    )
    again.add_argument("--since", required=True, help="RFC 3339: images made since then")
    again.add_argument("--threshold", type=float, help="override the configured nsfw threshold")
    again.add_argument("--json", action="store_true")
    again.set_defaults(run=moderation.rescreen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except operate.CommandError as error:
        print(f"pixevo: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def print_json(value: Any) -> None:
    print(json.dumps(value, default=str))
