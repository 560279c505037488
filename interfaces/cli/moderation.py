"""``pixevo moderation rescreen``: the current classifier over past images."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from application.post_processing import Rescreen
from interfaces.cli.operate import CommandError, container
from projections import generation_queries


def rescreen(args: argparse.Namespace) -> int:
    try:
        since = datetime.fromisoformat(args.since)
    except ValueError:
        raise CommandError(f"--since must be an RFC 3339 timestamp, not {args.since!r}") from None
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    c = container()
    policy = c.moderation
    if args.threshold is not None:
        if not 0 <= args.threshold <= 1:
            raise CommandError("--threshold must be between 0 and 1")
        policy = replace(policy, nsfw_threshold=args.threshold)
    ids = generation_queries.screened_since(c.pool, since)
    changed = list(Rescreen(c.generations, c.blobs, c.classifier, policy).run(iter(ids)))
    summary = {
        "screened": len(ids),
        "changed": [
            {
                "generation_id": str(r.generation_id),
                "before": r.before,
                "after": r.after,
                "score": r.score,
                "classifier": r.version,
                "threshold": policy.nsfw_threshold,
            }
            for r in changed
        ],
    }
    print(json.dumps(summary) if args.json else _text(summary))
    return 0


def _text(summary: dict[str, Any]) -> str:
    changed: list[dict[str, Any]] = summary["changed"]
    lines = [f"screened {summary['screened']} image(s); {len(changed)} verdict(s) changed"]
    lines += [
        f"  {c['generation_id']}: {c['before']} -> {c['after']} "
        f"(score {c['score']:.4f}, threshold {c['threshold']}, {c['classifier']})"
        for c in changed
    ]
    return "\n".join(lines)
