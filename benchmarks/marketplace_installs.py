"""Installs per second of one popular listing by 32 concurrent buyers, against the ledger
command rate measured in the same run (issue 12).

Why the seller's account does not serialise every install
    Every sale of a listing credits the same two accounts: its creator's and the platform's one
    fee account. The install request itself touches only the buyer's account (the payment), the
    ``Install`` aggregate and the buyer's copy; the earning and the fee are deposited afterwards
    by the ``PayOutInstall`` reaction, whose messages a worker process combines
    (``application.combining``): its threads hand their sales to whichever of them is saving,
    which credits them all in one transaction. A burst of N installs thus costs a few saves of
    the hot accounts instead of N saves that conflict and retry.

What it measures (all parts in one run, on one scratch database)
    1. The ledger command rate: ``BillingApplication.deposit`` commands/s on ONE account from 1
       thread (the hot aggregate's serial rate), from ``--threads`` threads (default 32) on that
       one account (optimistic-concurrency conflicts, each retried by reloading), and from
       ``--threads`` threads on as many different accounts (the uncontended rate). Each command
       loads the account, deposits and saves in its own transaction.
    2. Payouts in process: ``--threads`` threads each hand ``PayOutInstall.handle`` ``Install.Made``
       events of one seller (``--payouts`` per repeat, default 640): payouts/s combined, and
       half as many payouts each saved alone (``billing.pay_out([payout])`` per item from as
       many threads: they conflict on the two hot accounts and retry). Saves = transactions
       of the billing store committed; conflicts = saves refused for a stale version. Each
       run's seller balance is checked against the sales credited.
    3. End to end, every platform process real (simulator, API, dispatcher, projections, worker
       of ``--worker-processes`` x ``--worker-threads``; ``_support.start_platform``): per
       repeat a new creator lists a workflow at 2 credits over HTTP, then ``--buyers`` buyers
       (default 640, each with 100 credits, ledger projection caught up) each
       ``POST /v1/listings/{id}/install`` once, from ``--clients`` (default 32) keep-alive
       connections of one event loop. Accepted/s = installs answered (201, or 200 when the
       ``RecordInstall`` reaction recorded the paid install before the request did) over the
       wall time of the burst (first request sent to last answer); p50/p99 latency of those
       answers; credited after = first request to the last earning ``Deposited`` in the
       creator's account (followed on the write side); visible after = until
       ``GET /v1/me/earnings`` (the earnings read model) counts every install. End-to-end
       installs/s = buyers / credited after. One unmeasured burst first (``--warmup`` buyers on
       a listing of its own). One worker process by default: the platform's processes hold
       about 90 connections with it, and PostgreSQL's default ``max_connections`` is 100 (this
       process holds one while the platform runs). One process also means one combiner, so
       every payout of the burst can join the same batches.
    Ratios are against part 1's single-account serial deposit rate.

Command
    .venv/bin/python -m benchmarks.marketplace_installs [--parts 1,2,3] [--repeats 3]
        [--threads 32] [--deposits 320] [--payouts 640] [--buyers 640] [--clients 32]
        [--warmup 32] [--worker-processes 1] [--worker-threads 8]

Output: tables of medians over the repeats and ``benchmarks/results/marketplace_installs.json``.
Load generator, platform and PostgreSQL share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

import httpx
import psycopg
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Tracking

from application.billing import BillingApplication, Payout
from application.errors import ConcurrencyConflict
from application.logs import topic_of
from application.marketplace_reactions import PayOutInstall
from application.users import CreatedUser
from benchmarks._support import (
    ApiProcess,
    ChildProcess,
    Environment,
    HttpConnection,
    argument_parser,
    bench_environment,
    catch_up,
    cpu_cores,
    cpu_snapshot,
    free_port,
    median,
    percentile,
    redacted,
    run_async,
    server_version,
    simulated,
    start_platform,
    table,
    wait_until,
    write_result,
)
from benchmarks.workflow_hops import create_workflow
from domain.billing import CreditAccount
from domain.credits import Cause, account_id_for, to_units
from domain.marketplace import Install
from interfaces.bootstrap import Container, build

NAME = "marketplace_installs"
TOPUP = to_units(1)
PRICE_CREDITS = "2"
PRICE = to_units(PRICE_CREDITS)
FEE = to_units("0.4")  # the platform's 20 %
EARNING = PRICE - FEE
BUYER_CREDITS = "100"
GRAPH: dict[str, Any] = {
    "inputs": {"image": {"type": "image"}},
    "nodes": [{"id": "g", "op": "grayscale", "inputs": {"image": "$inputs.image"}}],
    "outputs": {"out": "$nodes.g"},
}
SETTLED_TIMEOUT_S = 60.0


# -- counting the billing store's saves ---------------------------------------------------------


class SaveCounter:
    """Saves of the billing application committed, and refused for a stale version."""

    def __init__(self) -> None:
        self.saved = 0
        self.conflicts = 0
        self._lock = threading.Lock()

    @contextmanager
    def counting(self, billing: BillingApplication) -> Iterator[SaveCounter]:
        """Counts ``billing.save`` while the block runs (commands call it once per attempt)."""
        save = billing.save

        def counted(*aggregates: Aggregate, **kwargs: Any) -> Any:
            try:
                recorded = save(*aggregates, **kwargs)
            except IntegrityError:
                with self._lock:
                    self.conflicts += 1
                raise
            with self._lock:
                self.saved += 1
            return recorded

        billing.save = counted  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            del billing.save


# -- in-process load: N threads sharing a number of calls ----------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    threads: int
    calls: int
    done: int
    gave_up: int  # ConcurrencyConflict: still conflicting after every retry
    seconds: float
    saves: int
    conflicts: int

    @property
    def per_s(self) -> float:
        return self.done / self.seconds


def hammer(
    billing: BillingApplication, threads: int, calls: int, call: Callable[[int, int], None]
) -> Window:
    """``threads`` threads make ``calls`` calls of ``call(thread, n)`` between them; the wall
    clock runs from a start barrier to the last thread's end."""
    barrier = threading.Barrier(threads + 1)
    done = [0] * threads
    gave_up = [0] * threads
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            for n in range(index, calls, threads):
                try:
                    call(index, n)
                    done[index] += 1
                except ConcurrencyConflict:
                    gave_up[index] += 1
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    with SaveCounter().counting(billing) as counter:
        barrier.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return Window(
        threads, calls, sum(done), sum(gave_up), seconds, counter.saved, counter.conflicts
    )


# -- part 1: the ledger command rate ---------------------------------------------------------------


def deposits(
    billing: BillingApplication, holders: Sequence[UUID], threads: int, calls: int
) -> Window:
    """Deposits of distinct causes; thread ``i`` deposits into ``holders[i % len(holders)]``."""

    def deposit(index: int, _: int) -> None:
        holder = holders[index % len(holders)]
        billing.deposit(holder, "purchase", TOPUP, Cause("purchase", str(uuid.uuid4())))

    return hammer(billing, threads, calls, deposit)


def ledger_rates(c: Container, args: argparse.Namespace) -> dict[str, Window]:
    hot = uuid.uuid4()
    spread = [uuid.uuid4() for _ in range(args.threads)]
    for holder in [hot, *spread]:
        c.billing.open_account(holder)
    return {
        "one account, 1 thread": deposits(c.billing, [hot], 1, args.deposits),
        f"one account, {args.threads} threads": deposits(
            c.billing, [hot], args.threads, args.deposits
        ),
        f"{args.threads} accounts, {args.threads} threads": deposits(
            c.billing, spread, args.threads, args.deposits
        ),
    }


# -- part 2: payouts in process --------------------------------------------------------------------


def sale(seller: UUID) -> Install.Made:
    """An ``Install.Made`` of one of ``seller``'s listings, as the marketplace records it."""
    return Install.Made(
        originator_id=uuid.uuid4(),
        originator_version=1,
        timestamp=Install.Made.create_timestamp(),
        originator_topic="domain.marketplace:Install",
        listing_id=UUID(int=1),
        buyer_id=uuid.uuid4(),
        creator_id=seller,
        source_workflow_id=UUID(int=2),
        workflow_id=uuid.uuid4(),
        version=1,
        title="popular",
        description="",
        price=PRICE,
        fee=FEE,
        earning=EARNING,
        fee_rate="0.2",
    )


def payout(event: Install.Made) -> Payout:
    return Payout(
        cause=Cause("install", str(event.originator_id)),
        buyer_id=event.buyer_id,
        seller_id=event.creator_id,
        price=event.price,
        earning=event.earning,
        fee=event.fee,
    )


def credited(billing: BillingApplication, seller: UUID, window: Window) -> None:
    """Raises unless the seller holds exactly the earnings of the payouts that went through."""
    balance = billing.load_account(seller).balance
    if balance != window.done * EARNING:
        raise RuntimeError(f"seller holds {balance} units after {window.done} payouts")


def payouts(c: Container, args: argparse.Namespace) -> dict[str, Window]:
    billing = c.billing
    seller = uuid.uuid4()
    events = [sale(seller) for _ in range(args.payouts)]
    reaction = PayOutInstall(billing)

    def handle(_: int, n: int) -> None:
        reaction.handle(events[n], Tracking("marketplace", n + 1))

    combined = hammer(billing, args.threads, len(events), handle)
    credited(billing, seller, combined)
    seller = uuid.uuid4()
    singles = [payout(sale(seller)) for _ in range(args.payouts // 2)]

    def pay_alone(_: int, n: int) -> None:
        billing.pay_out([singles[n]])

    alone = hammer(billing, args.threads, len(singles), pay_alone)
    credited(billing, seller, alone)
    return {"combined (PayOutInstall)": combined, "each saved alone": alone}


# -- part 3: end to end over HTTP --------------------------------------------------------------

#: Each buyer asks once, so either answer is an install this request asked for: 201 when the
#: request recorded it, 200 when the ``RecordInstall`` reaction (following the payment) beat
#: the request to it.
INSTALLED = (200, 201)
EARNINGS_STORED = (
    "SELECT count(*) FROM billing.billing_events WHERE originator_id = %s AND topic = %s"
)


@dataclass(frozen=True, slots=True)
class Sent:
    """One burst as the load generator saw it (analysed once the platform has stopped)."""

    creator: UUID
    buyers: int
    first: float  # epoch seconds of the first request
    seconds: float  # first request to last answer
    latencies: list[float]  # of the installs (200 or 201), sorted
    statuses: dict[str, int]
    visible: float  # epoch seconds when GET /v1/me/earnings counted every install
    cores: dict[str, float]  # first request to every earning stored


@dataclass(frozen=True, slots=True)
class Burst:
    buyers: int
    accepted: int
    statuses: dict[str, int]
    accepted_per_s: float
    p50_ms: float
    p99_ms: float
    burst_s: float
    credited_s: float
    visible_s: float
    end_to_end_per_s: float
    cores: dict[str, float]


async def install_burst(
    api: ApiProcess, listing_id: str, keys: Sequence[str], clients: int
) -> tuple[float, float, list[float], dict[str, int]]:
    """Each key installs the listing once, from ``clients`` connections; (epoch of the first
    request, seconds until the last answer, latencies of the installs, statuses)."""
    pending = list(reversed(keys))
    path = f"/v1/listings/{listing_id}/install"
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def client() -> None:
        conn = HttpConnection("127.0.0.1", api.port)
        try:
            while pending:
                key = pending.pop()
                sent = time.perf_counter()
                try:
                    status, _ = await conn.request(
                        "POST", path, b"{}", {"Authorization": f"Bearer {key}"}
                    )
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status = 0
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status in INSTALLED:
                    latencies.append(time.perf_counter() - sent)
        finally:
            await conn.close()

    first = time.time()
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return first, time.perf_counter() - start, sorted(latencies), statuses


def list_workflow(api: ApiProcess, creator: CreatedUser, title: str) -> str:
    headers = {"Authorization": f"Bearer {creator.api_key}"}
    with httpx.Client(base_url=api.base_url, headers=headers, timeout=30) as http:
        workflow_id = create_workflow(http, title, GRAPH)
        listed = http.post(
            "/v1/listings",
            json={
                "workflow_id": workflow_id,
                "version": 1,
                "title": title,
                "description": "one popular listing",
                "price_credits": PRICE_CREDITS,
            },
        )
    if listed.status_code != 201:
        raise RuntimeError(f"POST /v1/listings answered {listed.status_code}: {listed.text}")
    return str(listed.json()["id"])


def wait_stored(
    conn: psycopg.Connection[Any], creator: UUID, expected: int, children: Sequence[ChildProcess]
) -> None:
    """Until the creator's account holds ``expected`` deposits (one per install's earning)."""
    params = (account_id_for(creator), topic_of(CreditAccount.Deposited))

    def stored() -> bool:
        row = conn.execute(EARNINGS_STORED, params).fetchone()
        return row is not None and int(row[0]) >= expected

    wait_until(stored, timeout=SETTLED_TIMEOUT_S, interval=0.02, processes=children)


def wait_visible(
    api: ApiProcess, creator: CreatedUser, expected: int, children: Sequence[ChildProcess]
) -> float:
    """Epoch seconds when ``GET /v1/me/earnings`` first counts ``expected`` installs."""
    headers = {"Authorization": f"Bearer {creator.api_key}"}
    deadline = time.monotonic() + SETTLED_TIMEOUT_S
    seen: Any = None
    with httpx.Client(base_url=api.base_url, headers=headers, timeout=30) as http:
        while time.monotonic() < deadline:
            for child in children:
                child.check()
            answer = http.get("/v1/me/earnings", params={"limit": 1})
            if answer.status_code != 200:
                raise RuntimeError(f"GET /v1/me/earnings answered {answer.status_code}")
            seen = answer.json()
            if seen["installs"] >= expected:
                return time.time()
            time.sleep(0.02)
    logs = "\n".join(f"{child.name}:\n{child.log_tail()}" for child in children)
    raise RuntimeError(f"GET /v1/me/earnings still says {seen} for {expected} installs\n{logs}")


def burst(
    api: ApiProcess,
    children: list[ChildProcess],
    conn: psycopg.Connection[Any],
    creator: CreatedUser,
    buyers: Sequence[CreatedUser],
    clients: int,
) -> Sent:
    """The creator's new listing installed once by each buyer, until every earning is stored
    and the earnings read model counts every install."""
    listing_id = list_workflow(api, creator, f"popular {creator.user_id.hex[:8]}")
    before = cpu_snapshot(api, children)
    first, seconds, latencies, statuses = run_async(
        install_burst(api, listing_id, [b.api_key for b in buyers], clients)
    )
    wait_stored(conn, creator.user_id, len(buyers), children)
    cores = cpu_cores(before, cpu_snapshot(api, children), time.time() - first)
    visible = wait_visible(api, creator, len(buyers), children)
    return Sent(creator.user_id, len(buyers), first, seconds, latencies, statuses, visible, cores)


def analysed(c: Container, sent: Sent) -> Burst:
    """The burst with the time of its last earning, read from the creator's stored events."""
    _, entries = c.billing.history(sent.creator)
    earnings = [e.at.timestamp() for e in entries if e.kind == "earning"]
    if len(earnings) != sent.buyers:
        raise RuntimeError(f"{len(earnings)} earnings credited for {sent.buyers} installs")
    credited_s = max(earnings) - sent.first
    return Burst(
        buyers=sent.buyers,
        accepted=len(sent.latencies),
        statuses=sent.statuses,
        accepted_per_s=len(sent.latencies) / sent.seconds,
        p50_ms=percentile(sent.latencies, 0.50) * 1000,
        p99_ms=percentile(sent.latencies, 0.99) * 1000,
        burst_s=sent.seconds,
        credited_s=credited_s,
        visible_s=sent.visible - sent.first,
        end_to_end_per_s=sent.buyers / credited_s,
        cores=sent.cores,
    )


def end_to_end(env: Environment, args: argparse.Namespace) -> list[Burst]:
    """Buyers and creators made first; then this process holds one connection while the
    platform runs (its processes need most of the server's connections); then the analysis."""
    started = time.perf_counter()
    c = build(env.settings)
    try:
        buyers = [
            c.users.create(f"buyer-{i}@example.com", BUYER_CREDITS)
            for i in range(max(args.buyers, args.warmup))
        ]
        creators = [c.users.create(f"creator-{i}@example.com") for i in range(args.repeats + 1)]
        catch_up(c, "ledger")  # the install route's balance check reads the ledger projection
    finally:
        c.close()
    print(f"  {len(buyers)} buyers funded in {time.perf_counter() - started:.1f} s")
    sent: list[Sent] = []
    with ExitStack() as stack:
        api, children = start_platform(
            stack,
            simulated(env, free_port()),
            worker_processes=args.worker_processes,
            worker_threads=args.worker_threads,
        )
        conn = stack.enter_context(psycopg.connect(env.database_url, autocommit=True))
        try:
            if args.warmup:
                burst(api, children, conn, creators[-1], buyers[: args.warmup], args.clients)
            for repeat in range(args.repeats):
                sent.append(
                    burst(
                        api, children, conn, creators[repeat], buyers[: args.buyers], args.clients
                    )
                )
                print(f"  burst {repeat + 1}/{args.repeats} settled")
        except RuntimeError:
            print(f"the API's log ends:\n{api.log_tail()}")
            raise
    c = build(env.settings)
    try:
        return [analysed(c, one) for one in sent]
    finally:
        c.close()


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--parts", default="1,2,3", help="comma-separated subset of 1,2,3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=32, help="threads of parts 1 and 2")
    parser.add_argument("--deposits", type=int, default=320, help="deposits per measurement")
    parser.add_argument("--payouts", type=int, default=640, help="combined payouts per repeat")
    parser.add_argument("--buyers", type=int, default=640, help="installs per end-to-end burst")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP connections")
    parser.add_argument("--warmup", type=int, default=32, help="buyers of the unmeasured burst")
    parser.add_argument("--worker-processes", type=int, default=1)
    parser.add_argument("--worker-threads", type=int, default=8)
    args = parser.parse_args(argv)
    args.parts = sorted({int(p) for p in args.parts.split(",") if p.strip()})
    if not set(args.parts) <= {1, 2, 3}:
        parser.error("--parts takes 1, 2 and 3")
    if min(args.repeats, args.threads, args.deposits, args.payouts, args.buyers, args.clients) < 1:
        parser.error("counts must be positive")
    return args


def medians(windows: Sequence[Window]) -> dict[str, float]:
    return {
        "per_s": median([w.per_s for w in windows]),
        "conflicts_per_call": median([w.conflicts / w.calls for w in windows]),
        "saves_per_call": median([w.saves / w.calls for w in windows]),
        "gave_up": float(sum(w.gave_up for w in windows)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ledger: dict[str, list[Window]] = {}
    paid: dict[str, list[Window]] = {}
    bursts: list[Burst] = []
    with bench_environment(NAME) as env:
        postgres = server_version(env.database_url)
        print(f"{NAME}: PostgreSQL {postgres} at {redacted(env.database_url)}")
        if {1, 2} & set(args.parts):
            c = build(env.settings)
            try:
                in_process(c, args, ledger, paid)
            finally:
                c.close()
        if 3 in args.parts:
            bursts = end_to_end(env, args)
    return report(args, postgres, ledger, paid, bursts)


def in_process(
    c: Container,
    args: argparse.Namespace,
    ledger: dict[str, list[Window]],
    paid: dict[str, list[Window]],
) -> None:
    """Parts 1 and 2, interleaved in each repeat."""
    deposits(c.billing, [uuid.uuid4()], 4, 64)  # warm-up: pool, caches (not recorded)
    for repeat in range(args.repeats):
        if 1 in args.parts:
            for label, window in ledger_rates(c, args).items():
                ledger.setdefault(label, []).append(window)
        if 2 in args.parts:
            for label, window in payouts(c, args).items():
                paid.setdefault(label, []).append(window)
        print(f"  in-process repeat {repeat + 1}/{args.repeats} done")


def report(
    args: argparse.Namespace,
    postgres: str,
    ledger: dict[str, list[Window]],
    paid: dict[str, list[Window]],
    bursts: list[Burst],
) -> int:
    serial_label = "one account, 1 thread"
    serial = median([w.per_s for w in ledger.get(serial_label, [])])
    results: dict[str, Any] = {"serial_deposits_per_s": serial}
    if ledger:
        rows = []
        for label, windows in ledger.items():
            m = medians(windows)
            rows.append(
                [label, m["per_s"], m["per_s"] / serial, m["conflicts_per_call"], int(m["gave_up"])]
            )
        print()
        print(f"1. deposit commands/s, medians of {args.repeats} x {args.deposits} deposits")
        print(table(["deposits", "cmd/s", "x serial", "conflicts/cmd", "gave up"], rows))
        results["ledger"] = {label: medians(w) for label, w in ledger.items()}
    if paid:
        rows = []
        for label, windows in paid.items():
            m = medians(windows)
            rows.append(
                [
                    label,
                    windows[0].calls,
                    m["per_s"],
                    m["per_s"] / serial,
                    m["saves_per_call"],
                    m["conflicts_per_call"],
                    int(m["gave_up"]),
                ]
            )
        print()
        print(f"2. payouts/s of one seller from {args.threads} threads, medians of {args.repeats}")
        print(
            table(
                ["payouts", "n", "payouts/s", "x serial", "saves/payout", "conflicts/p", "gave up"],
                rows,
            )
        )
        results["payouts"] = {label: medians(w) for label, w in paid.items()}
    if bursts:
        fields = (
            "accepted_per_s",
            "p50_ms",
            "p99_ms",
            "credited_s",
            "visible_s",
            "end_to_end_per_s",
        )
        m = {f: median([getattr(b, f) for b in bursts]) for f in fields}
        rows = [
            ["installs accepted/s (200/201s over the burst)", m["accepted_per_s"]],
            ["install latency p50 ms", m["p50_ms"]],
            ["install latency p99 ms", m["p99_ms"]],
            ["every earning credited after s", m["credited_s"]],
            ["every install in GET /v1/me/earnings after s", m["visible_s"]],
            ["end-to-end installs/s (credited)", m["end_to_end_per_s"]],
            ["accepted/s over serial deposits/s", m["accepted_per_s"] / serial],
            ["end-to-end/s over serial deposits/s", m["end_to_end_per_s"] / serial],
        ]
        print()
        print(
            f"3. {args.buyers} buyers install one listing from {args.clients} connections, "
            f"medians of {len(bursts)} bursts; worker {args.worker_processes}x"
            f"{args.worker_threads}"
        )
        print(table(["measure", "value"], rows))
        print(f"answers: {[b.statuses for b in bursts]} (200: the reaction recorded it first)")
        results["end_to_end"] = {**m, "bursts": [asdict(b) for b in bursts]}
    print(json.dumps({"benchmark": NAME, **_headline(results)}))
    path = write_result(
        NAME,
        {
            "config": dict(vars(args)),
            "price_credits": PRICE_CREDITS,
            "postgres": postgres,
            "results": results,
            "runs": {
                "ledger": {k: [asdict(w) for w in v] for k, v in ledger.items()},
                "payouts": {k: [asdict(w) for w in v] for k, v in paid.items()},
            },
        },
    )
    print(f"written {path}")
    return 0


def _headline(results: dict[str, Any]) -> dict[str, float]:
    found = {"serial_deposits_per_s": results["serial_deposits_per_s"]}
    for label, m in results.get("payouts", {}).items():
        found[f"payouts_per_s {label}"] = m["per_s"]
    if "end_to_end" in results:
        found["installs_accepted_per_s"] = results["end_to_end"]["accepted_per_s"]
        found["installs_end_to_end_per_s"] = results["end_to_end"]["end_to_end_per_s"]
    return found


if __name__ == "__main__":
    raise SystemExit(main())
