"""Publishing live messages to Redis pub/sub, from processes that are not the API.

The API subscribes through Litestar's channels plugin (Redis pub/sub backend), which uses the
channel names as they are; so this publisher and the plugin agree on :mod:`application.live`'s
names and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
import structlog

from application.live import LiveMessage, channel_of, encode, user_channel

log = structlog.get_logger(__name__)


class RedisLivePublisher:
    def __init__(self, redis_url: str, namespace: str) -> None:
        self.namespace = namespace
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)

    def publish(self, messages: Sequence[LiveMessage]) -> None:
        """Sends each message to its generation's (or run's) and its user's channel, in order.

        Best effort: subscribers that miss a message (Redis down, a process restarting) find
        it in the feed table when they resume or at their next catch-up.
        """
        pipe = self._redis.pipeline(transaction=False)
        for message in messages:
            data = encode(message)
            pipe.publish(channel_of(self.namespace, message), data)
            pipe.publish(user_channel(self.namespace, message.user_id), data)
        try:
            pipe.execute()
        except redis.RedisError as error:
            log.warning("live.publish_failed", messages=len(messages), error=str(error))

    def close(self) -> None:
        self._redis.close()
