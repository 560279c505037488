"""The reactions that carry a generation from request to billed result.

    FundGeneration       Requested        -> a hold on the user's credits (for the generation's
                                             cause), then Funded + Queued, or served from the
                                             cache, or Failed: insufficient_credits
    Generate             Queued           -> a slot under the user's cap (or wait in line),
                                             the provider (see :mod:`.provider_call` for retry,
                                             circuit breaker, fallback and deferral) ->
                                             Submitted, then Produced
    CancelAtProvider     CancelRequested  -> the provider is told; Cancelled once it confirms
    SettleGeneration     Completed | Failed | Cancelled | Blocked -> capture or release the hold

(:mod:`.deadlines`: the sweep that ends a generation past its deadline.)
(``Produced`` is taken on by :class:`application.post_processing.ProcessResult`.)

Each records its effect with a tracking record of the event it handles, so a redelivered
message changes nothing; ``Generate`` records the provider's job id before it waits, so a
worker killed mid-call is resumed (by the redelivered message) without a second submission.
The request a provider receives and what it costs were decided when the generation was
requested (or when a fallback switched its model) and are read from the aggregate.
"""

from __future__ import annotations

from application.saga.cancelling import CancelAtProvider
from application.saga.funding import FundGeneration
from application.saga.generate import Generate
from application.saga.settlement import SettleGeneration

__all__ = ["CancelAtProvider", "FundGeneration", "Generate", "SettleGeneration"]
