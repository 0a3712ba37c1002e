"""Redis counters: one budget shared by every process and host that points at the same Redis.

    pip install "ownership-ctx[budgets]"   # the redis client

Each counter is a hash (``spent``, ``reserved``) that expires a day after its period ends,
with a sorted set of the leases of the reservations it holds (released when they expire).
Reserve and settle are Lua scripts, so each is atomic across all the counters a call touches
(a team budget and a team+feature budget move together or not at all). Every error is
`BackendUnavailable`; the engine decides whether that fails open or closed. A short socket
timeout keeps a hung Redis from holding requests.

On Redis Cluster the counters of one call must share a slot: use a ``prefix`` with a hash tag
(``"{oc-budgets}:"``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any, Final

try:
    import redis
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'the Redis budget backend needs the redis client: pip install "ownership-ctx[budgets]"'
    ) from error

from .counters import BackendUnavailable, Held, Lease, Usage

__all__ = ["RedisCounters"]

# Each counter is two keys: its hash (spent, reserved) and a sorted set of the leases of the
# reservations it holds (member "<id>:<amount>", score: the lease's end). Numbers pass through
# as the strings Python wrote: Lua's own formatting of -0 or 1e15 is no integer for Redis.

# KEYS: (counter, leases) per counter.
# ARGV: amount, now, lease member, lease end, then (limit, expire-at) per counter.
# Returns 0 when granted, else the number (from 1) of the counter that refused.
_RESERVE: Final = """
local n = #KEYS / 2
for i = 1, n do
  local key, leases = KEYS[2 * i - 1], KEYS[2 * i]
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', ARGV[2])
  if #expired > 0 then
    local total = 0
    for _, member in ipairs(expired) do
      total = total + tonumber(string.match(member, ':(%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', ARGV[2])
    local left = redis.call('HINCRBY', key, 'reserved', string.format('%d', -total))
    if left < 0 then redis.call('HSET', key, 'reserved', 0) end
  end
  local used = redis.call('HMGET', key, 'spent', 'reserved')
  if tonumber(used[1] or '0') + tonumber(used[2] or '0') >= tonumber(ARGV[3 + 2 * i]) then
    return i
  end
end
for i = 1, n do
  local key, leases = KEYS[2 * i - 1], KEYS[2 * i]
  if ARGV[1] ~= '0' then
    redis.call('HINCRBY', key, 'reserved', ARGV[1])
    redis.call('ZADD', leases, ARGV[4], ARGV[3])
    redis.call('EXPIREAT', leases, ARGV[4 + 2 * i])
  end
  redis.call('EXPIREAT', key, ARGV[4 + 2 * i])
end
return 0
"""
# KEYS: (counter, leases) per counter.
# ARGV: minus the reserved amount, actual, lease member ('' for none), then expire-at each.
_SETTLE: Final = """
for i = 1, #KEYS / 2 do
  local key, leases = KEYS[2 * i - 1], KEYS[2 * i]
  local held = 1
  if ARGV[3] ~= '' then held = redis.call('ZREM', leases, ARGV[3]) end
  if held == 1 and ARGV[1] ~= '0' then
    local left = redis.call('HINCRBY', key, 'reserved', ARGV[1])
    if left < 0 then redis.call('HSET', key, 'reserved', 0) end
  end
  redis.call('HINCRBY', key, 'spent', ARGV[2])
  redis.call('EXPIREAT', key, ARGV[3 + i])
end
return 0
"""
_RAISE: Final = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
if tonumber(ARGV[1]) > spent then redis.call('HSET', KEYS[1], 'spent', ARGV[1]) end
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 0
"""


def _at(ts: float) -> int:
    return math.ceil(ts)


class RedisCounters:
    """`Counters` in Redis. ``prefix`` namespaces every key (one per deployment)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "oc:budgets:",
        timeout: float = 0.25,
        client: Any = None,
    ) -> None:
        self.prefix = prefix
        self.client = client or redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._reserve = self.client.register_script(_RESERVE)
        self._settle = self.client.register_script(_SETTLE)
        self._raise = self.client.register_script(_RAISE)

    def __repr__(self) -> str:
        return f"RedisCounters(prefix={self.prefix!r})"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as error:
            raise BackendUnavailable(f"redis {what}: {type(error).__name__}") from error

    def _keys(self, held: Sequence[Held]) -> list[str]:
        keys = []
        for item in held:
            keys += [self.prefix + item.key, self.prefix + item.key + ":leases"]
        return keys

    def reserve(self, held: Sequence[Held], amount: int, lease: Lease, now: float) -> int | None:
        args: list[object] = [str(amount), repr(now), f"{lease.id}:{amount}", repr(lease.until)]
        for item in held:
            args += [str(item.limit), _at(item.expires_at)]
        refused = int(self._call("reserve", self._reserve, keys=self._keys(held), args=args))
        return None if refused == 0 else refused - 1

    def settle(self, held: Sequence[Held], reserved: int, actual: int, lease: Lease | None) -> None:
        member = "" if lease is None else f"{lease.id}:{reserved}"
        args = [str(-reserved), str(actual), member, *(_at(item.expires_at) for item in held)]
        self._call("settle", self._settle, keys=self._keys(held), args=args)

    def read(self, keys: Sequence[str]) -> list[Usage | None]:
        if not keys:
            self._call("ping", self.client.ping)  # so that a refresh notices Redis is down
            return []
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self.prefix + key, "spent", "reserved")
        rows = self._call("read", pipe.execute)
        out: list[Usage | None] = []
        for spent, reserved in rows:
            if spent is None and reserved is None:
                out.append(None)
            else:
                out.append(Usage(int(spent or 0), int(reserved or 0)))
        return out

    def raise_to(self, key: str, spent: int, expires_at: float) -> None:
        args = [spent, _at(expires_at)]
        self._call("rebuild", self._raise, keys=[self.prefix + key], args=args)

    def epoch(self) -> str:
        # A key without expiry, written once: gone (or new) exactly when Redis lost its data.
        name = self.prefix + "epoch"
        self._call("epoch", self.client.set, name, uuid.uuid4().hex, nx=True)
        value = self._call("epoch", self.client.get, name)
        return value.decode() if isinstance(value, bytes) else str(value)

    def first(self, key: str, expires_at: float) -> bool:
        name = self.prefix + "flag:" + key
        return bool(self._call("flag", self.client.set, name, 1, nx=True, exat=_at(expires_at)))
