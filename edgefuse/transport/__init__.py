"""ZeroMQ publish/subscribe with a shared-memory fast path and CURVE security."""

from edgefuse.transport.endpoints import Endpoint
from edgefuse.transport.errors import ShmUnavailableError, TransportError
from edgefuse.transport.pubsub import Publisher, Subscriber, TransportOptions
from edgefuse.transport.security import CurveKeys, generate_keys
from edgefuse.transport.stats import TopicStats

__all__ = [
    "CurveKeys",
    "Endpoint",
    "Publisher",
    "ShmUnavailableError",
    "Subscriber",
    "TopicStats",
    "TransportError",
    "TransportOptions",
    "generate_keys",
]
