"""A faithful port of ROS 2 message_filters' ``ApproximateTime`` synchronisation policy.

Source: ``include/message_filters/sync_policies/approximate_time.hpp`` in ``ros2/message_filters``
(the variadic-template version, read at commit 046295518aca0f185ddeb719b2e3da5f80ff7cf5). The
algorithm, its state and its method names are kept: per-topic deques, the ``past_`` vectors,
``num_non_empty_deques_``, the candidate and its pivot, ``process()``, ``recover()``,
``dequeDeleteFront``, ``dequeMoveFrontToPast``, ``makeCandidate``, ``publishCandidate``,
``checkInterMessageBound``, the virtual search that uses the inter-message lower bounds, and the
queue-size drop in ``add()``. The C++ unit tests (``test/test_approximate_time_policy.cpp``) are
ported in ``tests/sync/test_approximate.py`` (the file is the same at commits 49d9a33e and
146f163e, which differ only in formatting).

What the policy does (after the ROS documentation): it outputs sets of one message per topic,
each message used at most once, chosen so that each set spans as little time as possible given
the messages around it. A set is output as soon as it is provably optimal, which in general
means once every topic has a message later than the set's latest one (its *pivot*).
``max_interval_ns`` refuses sets spanning more than that; ``lower_bounds_ns[i]`` (the least time
between two messages of topic ``i``) lets the policy prove optimality earlier, without waiting
for the next message of a slow topic.

Differences from the C++ (none changes which sets are output or when):

- Times are plain integers (nanoseconds); ``Duration * double`` is reproduced bit for bit as
  rclcpp computes it on x86-64: ``int64`` times the ``double`` factor in ``long double``
  (64-bit significand, rounded half to even), then truncated toward zero.
- Any number of topics (at least 2), not at most 9.
- ``add`` returns the sets it published (instead of calling a callback), in publication order;
  ``flush`` ends the input (ROS has no end of input; see its documentation).
- The warnings of ``checkInterMessageBound`` go to :mod:`logging`, once per topic as in ROS.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

from edgefuse.sync.errors import SyncError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``NO_PIVOT`` of the C++ (there, the maximum uint32).
NO_PIVOT = -1
#: The C++ default of ``max_interval_duration_``: ``Duration(INT32_MAX, 999999999)``.
DEFAULT_MAX_INTERVAL_NS = (2**31 - 1) * 1_000_000_000 + 999_999_999
#: Significand bits of x87 ``long double`` (rclcpp's ``Duration::operator*`` uses it).
_LONG_DOUBLE_BITS = 64


def scale_duration_ns(duration_ns: int, scale: float) -> int:
    """``rclcpp::Duration(duration_ns) * scale`` as rclcpp computes it on x86-64.

    rclcpp converts both to ``long double`` (exact for an ``int64`` and a ``double``),
    multiplies (the product is rounded to a 64-bit significand, half to even) and truncates
    toward zero to ``int64``. Emulated with integers so that comparisons made with the scaled
    value (the age penalty) are exactly the C++ ones.
    """
    num, den = scale.as_integer_ratio()  # den is a power of two
    product = duration_ns * num
    negative = product < 0
    product = -product if negative else product
    extra = product.bit_length() - _LONG_DOUBLE_BITS
    if extra > 0:
        q, r = product >> extra, product & ((1 << extra) - 1)
        half = 1 << (extra - 1)
        if r > half or (r == half and q & 1):
            q += 1
        product = q << extra
    result = product // den  # positive: floor is truncation toward zero
    return -result if negative else result


class ApproximateTimeSync(Generic[T]):
    """ROS 2 ``ApproximateTime`` for ``n_topics`` ≥ 2 topics, fed one message at a time.

    ``add(i, stamp_ns, item)`` is ``Synchronizer::add<i>`` of the C++ and returns the sets it
    publishes, each a tuple of ``(stamp_ns, item)`` per topic in topic order. ``queue_size``
    is the C++ constructor's (at least 1; ROS recommends at least 2): messages of a topic
    beyond it, counting the ones the search has set aside, drop the topic's oldest one.
    ``max_interval_ns`` (None: the C++ default, about 68 years) and ``lower_bounds_ns`` (one
    per topic, None: all 0) are ``setMaxIntervalDuration`` and ``setInterMessageLowerBound``;
    ``age_penalty`` is ``setAgePenalty`` (default 0.1, as in ROS).
    """

    def __init__(
        self,
        n_topics: int,
        *,
        queue_size: int,
        max_interval_ns: int | None = None,
        lower_bounds_ns: Sequence[int] | None = None,
        age_penalty: float = 0.1,
    ) -> None:
        if n_topics < 2:
            raise SyncError(f"ApproximateTime needs at least 2 topics, got {n_topics}")
        if queue_size < 1:
            raise SyncError(f"queue size must be at least 1, got {queue_size}")
        if max_interval_ns is not None and max_interval_ns < 0:
            raise SyncError(f"max interval must not be negative, got {max_interval_ns} ns")
        bounds = [0] * n_topics if lower_bounds_ns is None else [int(b) for b in lower_bounds_ns]
        if len(bounds) != n_topics:
            raise SyncError(f"{len(bounds)} inter-message lower bounds for {n_topics} topics")
        if any(b < 0 for b in bounds):
            raise SyncError(f"inter-message lower bounds must not be negative: {bounds}")
        if not age_penalty >= 0:  # also refuses NaN
            raise SyncError(f"age penalty must be >= 0, got {age_penalty}")
        self.n_topics = n_topics
        self.queue_size = queue_size
        self.max_interval_ns = (
            DEFAULT_MAX_INTERVAL_NS if max_interval_ns is None else max_interval_ns
        )
        self.lower_bounds_ns = bounds
        self.age_penalty = age_penalty
        # C++ computes (1 + age_penalty_) in double, then Duration * double.
        self._scale = 1.0 + age_penalty
        self._deques: list[deque[tuple[int, T]]] = [deque() for _ in range(n_topics)]
        self._past: list[list[tuple[int, T]]] = [[] for _ in range(n_topics)]
        self._num_non_empty_deques = 0
        self._candidate: tuple[tuple[int, T], ...] | None = None
        self._candidate_start = 0
        self._candidate_end = 0
        self._pivot_time = 0
        self._pivot = NO_PIVOT
        self._has_dropped_messages = [False] * n_topics
        self._warned_about_incorrect_bound = [False] * n_topics
        self._published: list[tuple[tuple[int, T], ...]] = []

    # -- public API ---------------------------------------------------------------------------

    def add(self, topic_index: int, stamp_ns: int, item: T) -> list[tuple[tuple[int, T], ...]]:
        """Add a message to topic ``topic_index``; return the sets this publishes (maybe none).

        This is ``ApproximateTime::add<i>`` line for line: push, run ``process()`` when every
        topic has a message, then enforce the queue size (which cancels the candidate search
        and drops the topic's oldest message).
        """
        if not 0 <= topic_index < self.n_topics:
            raise SyncError(f"topic index {topic_index} out of range 0..{self.n_topics - 1}")
        i = topic_index
        dq = self._deques[i]
        dq.append((stamp_ns, item))
        if len(dq) == 1:
            # We have just added the first message, so it was empty before.
            self._num_non_empty_deques += 1
            if self._num_non_empty_deques == self.n_topics:
                self._process()
        else:
            self._check_inter_message_bound(i)
        # During the process() above, queue i may hold queue_size + 1 messages.
        past = self._past[i]
        if len(dq) + len(past) > self.queue_size:
            # Cancel the ongoing candidate search, if any; the count is recomputed from scratch.
            self._num_non_empty_deques = 0
            self._recover_all()
            # Drop the oldest message of the offending topic.
            assert dq
            dq.popleft()
            self._has_dropped_messages[i] = True
            if self._pivot != NO_PIVOT:
                # The candidate is no longer valid; there may be enough messages for a new one.
                self._candidate = None
                self._pivot = NO_PIVOT
                self._process()
        return self._take_published()

    def flush(self) -> list[tuple[tuple[int, T], ...]]:
        """End the input: publish what can still be published, return it, and reset.

        ROS has no end of input; this is the rule used here. While there is a candidate, it is
        published: the search left it pending only because a topic had no message after it,
        and no message will come any more, so no better set can be found (what the C++ does
        when the search is exhausted, ``start_index == pivot_``). Publishing recovers the
        messages set aside, so ``process()`` then runs again as usual and may publish more sets
        or leave a new candidate, which the loop publishes in turn. When there is no candidate
        left, at least one topic has no message, so the remaining messages cannot form a set:
        they are discarded and the synchroniser is as new (with the same settings). With a
        queue large enough never to drop a message, this equals giving every topic one more
        message infinitely far in the future and dropping the sets that contain one.
        """
        while self._pivot != NO_PIVOT:
            self._publish_candidate()
            self._process()
        published = self._take_published()
        for dq, past in zip(self._deques, self._past, strict=True):
            dq.clear()
            past.clear()
        self._num_non_empty_deques = 0
        self._has_dropped_messages = [False] * self.n_topics
        self._warned_about_incorrect_bound = [False] * self.n_topics
        return published

    @property
    def pending(self) -> int:
        """Messages held (in the deques or set aside in ``past_``), for introspection."""
        return sum(len(d) for d in self._deques) + sum(len(p) for p in self._past)

    # -- the C++ private methods ----------------------------------------------------------------

    def _take_published(self) -> list[tuple[tuple[int, T], ...]]:
        out, self._published = self._published, []
        return out

    def _check_inter_message_bound(self, i: int) -> None:
        """``checkInterMessageBound<i>``: warn (once) on out-of-order or too close messages."""
        if self._warned_about_incorrect_bound[i]:
            return
        dq = self._deques[i]
        v = self._past[i]
        assert dq
        msg_time = dq[-1][0]
        if len(dq) == 1:
            if not v:
                # The previous message was published (or never came): no bound to check.
                return
            previous_msg_time = v[-1][0]
        else:
            previous_msg_time = dq[-2][0]
        if msg_time < previous_msg_time:
            log.warning("Messages of type %d arrived out of order (will print only once)", i)
            self._warned_about_incorrect_bound[i] = True
        elif msg_time - previous_msg_time < self.lower_bounds_ns[i]:
            log.warning(
                "Messages of type %d arrived closer (%d) than the lower bound you provided "
                "(%d) (will print only once)",
                i,
                msg_time - previous_msg_time,
                self.lower_bounds_ns[i],
            )
            self._warned_about_incorrect_bound[i] = True

    def _deque_delete_front(self, i: int) -> None:
        """``dequeDeleteFront``: drop the front of deque ``i`` (assumed non-empty)."""
        dq = self._deques[i]
        assert dq
        dq.popleft()
        if not dq:
            self._num_non_empty_deques -= 1

    def _deque_move_front_to_past(self, i: int) -> None:
        """``dequeMoveFrontToPast``: set the front of deque ``i`` aside in ``past_[i]``."""
        dq = self._deques[i]
        assert dq
        self._past[i].append(dq.popleft())
        if not dq:
            self._num_non_empty_deques -= 1

    def _make_candidate(self) -> None:
        """``makeCandidate``: the deques' fronts become the candidate; ``past_`` is cleared."""
        self._candidate = tuple(dq[0] for dq in self._deques)
        # Delete all past messages, since we have found a better candidate.
        for v in self._past:
            v.clear()

    def _recover_counts(self, num_messages: Sequence[int]) -> None:
        """``recoverAll(num_messages)``: put back the last ``num_messages[i]`` of each past."""
        for i, n in enumerate(num_messages):
            v, q = self._past[i], self._deques[i]
            assert n <= len(v)
            for _ in range(n):
                q.appendleft(v.pop())
            if q:
                self._num_non_empty_deques += 1

    def _recover_all(self) -> None:
        """``recoverAll()``: put every message of every ``past_`` back in front of its deque."""
        for v, q in zip(self._past, self._deques, strict=True):
            q.extendleft(reversed(v))
            v.clear()
            if q:
                self._num_non_empty_deques += 1

    def _recover_and_delete_all(self) -> None:
        """``recoverAndDeleteAll``: recover, then drop each front (the published message)."""
        for v, q in zip(self._past, self._deques, strict=True):
            q.extendleft(reversed(v))
            v.clear()
            assert q
            q.popleft()
            if q:
                self._num_non_empty_deques += 1

    def _publish_candidate(self) -> None:
        """``publishCandidate``: output the candidate and recover the hidden messages."""
        assert self._candidate is not None
        self._published.append(self._candidate)
        self._candidate = None
        self._pivot = NO_PIVOT
        self._num_non_empty_deques = 0  # recomputed from scratch
        self._recover_and_delete_all()

    def _candidate_boundary(self, *, end: bool) -> tuple[int, int]:
        """``getCandidateBoundary``: (index, time) of the earliest (latest if ``end``) front.

        Ties go to the first topic for the start and to the last topic for the end, as the
        C++ ``(t < time) ^ end`` test does.
        """
        index = 0
        time = self._deques[0][0][0]
        for k in range(1, self.n_topics):
            t = self._deques[k][0][0]
            if (t < time) ^ end:
                time = t
                index = k
        return index, time

    def _virtual_time(self, i: int) -> int:
        """``getVirtualTime<i>``: the front's time, or for an empty deque the earliest time the
        next message can have (previous + lower bound), but not before the pivot."""
        assert self._pivot != NO_PIVOT
        q = self._deques[i]
        if not q:
            v = self._past[i]
            assert v  # because we have a candidate
            msg_time_lower_bound = v[-1][0] + self.lower_bounds_ns[i]
            if msg_time_lower_bound > self._pivot_time:  # take the max
                return msg_time_lower_bound
            return self._pivot_time
        return q[0][0]

    def _virtual_candidate_boundary(self, *, end: bool) -> tuple[int, int]:
        """``getVirtualCandidateBoundary``: as :meth:`_candidate_boundary` on virtual times."""
        virtual_times = [self._virtual_time(k) for k in range(self.n_topics)]
        time = virtual_times[0]
        index = 0
        for k, t in enumerate(virtual_times):
            if (t < time) ^ end:
                time = t
                index = k
        return index, time

    def _process(self) -> None:
        """``process()``: search candidates while every deque has a message."""
        n = self.n_topics
        scale = self._scale
        while self._num_non_empty_deques == n:
            # Find the start and end of the current interval.
            end_index, end_time = self._candidate_boundary(end=True)
            start_index, start_time = self._candidate_boundary(end=False)
            for k in range(n):
                if k != end_index:
                    # No dropped message could have been better to use than the ones we
                    # have, so it becomes ok to use this topic as pivot in the future.
                    self._has_dropped_messages[k] = False
            if self._pivot == NO_PIVOT:
                # No candidate (the past_ vectors are empty).
                if end_time - start_time > self.max_interval_ns:
                    # Too big to be a valid candidate: move to the next.
                    self._deque_delete_front(start_index)
                    continue
                if self._has_dropped_messages[end_index]:
                    # The would-be pivot topic dropped messages: not a good pivot.
                    self._deque_delete_front(start_index)
                    continue
                # A valid candidate, and we have none: take it.
                self._make_candidate()
                self._candidate_start = start_time
                self._candidate_end = end_time
                self._pivot = end_index
                self._pivot_time = end_time
                self._deque_move_front_to_past(start_index)
            else:
                # We already have a candidate: is this one better?
                if scale_duration_ns(end_time - self._candidate_end, scale) >= (
                    start_time - self._candidate_start
                ):
                    # Not better: move to the next.
                    self._deque_move_front_to_past(start_index)
                else:
                    # Better: keep the same pivot (and pivot time).
                    self._make_candidate()
                    self._candidate_start = start_time
                    self._candidate_end = end_time
                    self._deque_move_front_to_past(start_index)
            # We have a candidate and a pivot.
            assert self._pivot != NO_PIVOT
            age_check = scale_duration_ns(end_time - self._candidate_end, scale)
            if start_index == self._pivot:
                # All candidates for this pivot are exhausted: output the best one.
                self._publish_candidate()
            elif age_check >= self._pivot_time - self._candidate_start:
                # Provably optimal already: any future candidate must contain the interval
                # [pivot_time, end_time], which is already too big.
                self._publish_candidate()
            elif self._num_non_empty_deques < n:
                self._virtual_search()

    def _virtual_search(self) -> None:
        """The ``while (1)`` of ``process()``: use the rate bounds to try to prove optimality."""
        n = self.n_topics
        scale = self._scale
        num_virtual_moves = [0] * n
        while True:
            # The C++ computes the end index here too, and does not use it.
            _, end_time = self._virtual_candidate_boundary(end=True)
            start_index, start_time = self._virtual_candidate_boundary(end=False)
            scaled = scale_duration_ns(end_time - self._candidate_end, scale)
            if scaled >= self._pivot_time - self._candidate_start:
                # Optimality proved: any future candidate must contain [pivot_time, end_time].
                self._publish_candidate()  # cleans up the virtual moves as a byproduct
                return
            if scaled < start_time - self._candidate_start:
                # Cannot prove optimality: a virtual (optimistic) candidate is better. Undo.
                self._num_non_empty_deques = 0  # recomputed from scratch
                self._recover_counts(num_virtual_moves)
                return
            # start_index == pivot would make the two tests above complementary, so one of them
            # would have returned: the loop terminates.
            assert start_index != self._pivot
            assert start_time < self._pivot_time
            self._deque_move_front_to_past(start_index)
            num_virtual_moves[start_index] += 1
