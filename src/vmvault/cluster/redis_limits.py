"""Fleet-wide admission and pool budgets in Redis: every step one Lua script, so it is
atomic however many workers ask at once, with Redis's own clock (``TIME``) for all of them.

Admission (``RedisGate``): the leases are a sorted set of lease ids scored by their expiry
(milliseconds), beside a hash of what each lease occupies (its VM and disks per pool). Each
script first drops the expired leases, so a dead worker's places come back within a lease's
time; a live worker's job renews its lease at every look for a cancel. The rules are
``jobs.admission.admit``'s, written once more in Lua (Redis runs no Python); the tests hold
the two to the same answers, reasons included, so the planner's simulation agrees with the
fleet.

Budgets (``RedisPoolBudget``): a pool's egress and request buckets are token buckets kept
in a hash (tokens, stamp), with ``engine.throttle.TokenBucket``'s semantics: a take may go
into debt and the caller sleeps for the debt, here in its own process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis

from vmvault.engine.throttle import Bucket, wait_for
from vmvault.errors import VmvaultError
from vmvault.jobs.admission import JobLoad, Limits

log = logging.getLogger("vmvault.cluster")

_DROP_EXPIRED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
"""

# KEYS: leases (zset), loads (hash), peaks (hash). ARGV: lease, load (JSON: {"vm": name,
# "pools": [[pool, disks], ...]} in the candidate's order), limits (JSON: max_vms,
# max_disks, caps {pool: cap}), ttl ms. Returns "" when admitted, else why not.
_ADMIT = (
    _DROP_EXPIRED
    + """
local cand = cjson.decode(ARGV[2])
local limits = cjson.decode(ARGV[3])
local running = 0
local load = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    local job = cjson.decode(raw)
    if job.vm == cand.vm then
      return 'a backup of ' .. cand.vm .. ' is already running'
    end
    running = running + 1
    for _, pair in ipairs(job.pools) do
      load[pair[1]] = (load[pair[1]] or 0) + pair[2]
    end
  end
end
if running >= limits.max_vms then
  return running .. ' VMs are backing up (at most ' .. limits.max_vms .. ' at once)'
end
for _, pair in ipairs(cand.pools) do
  local pool, disks = pair[1], pair[2]
  local cap = limits.max_disks
  local own = limits.caps[pool]
  if own and own < cap then cap = own end
  local busy = load[pool] or 0
  if busy + disks > cap and busy > 0 then
    return 'pool ' .. pool .. ' has ' .. busy .. ' disks in flight (at most ' .. cap .. ')'
  end
end
local expiry = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
running = running + 1
if running > tonumber(redis.call('HGET', KEYS[3], 'vms') or '0') then
  redis.call('HSET', KEYS[3], 'vms', running)
end
for _, pair in ipairs(cand.pools) do
  local busy = (load[pair[1]] or 0) + pair[2]
  if busy > tonumber(redis.call('HGET', KEYS[3], 'pool:' .. pair[1]) or '0') then
    redis.call('HSET', KEYS[3], 'pool:' .. pair[1], busy)
  end
end
return ''
"""
)

# KEYS: leases, loads. ARGV: lease, load, ttl ms. Returns 1 if the lease was still held.
_RENEW = (
    _DROP_EXPIRED
    + """
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if held then return 1 end
return 0
"""
)

# KEYS: the job's waiting mark. ARGV: holder, ttl ms. Returns 1 if the holder has it.
_WAIT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"""

_DONE_WAITING = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS: the bucket (hash). ARGV: rate (units/s), burst, amount. Returns the seconds the
# caller must wait, as a string (Redis would truncate a Lua number to an integer).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or burst)
local stamp = tonumber(redis.call('HGET', KEYS[1], 'stamp') or now)
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate) - amount
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'stamp', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], 3600)
if tokens >= 0 then return '0' end
return string.format('%.6f', -tokens / rate)
"""


class FleetUnavailable(VmvaultError):
    """Redis (the fleet's budgets) did not answer: the job is tried again later."""

    code = "fleet_unavailable"
    http_status = 503
    transient = True


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _load_doc(load: JobLoad) -> str:
    return json.dumps({"vm": load.vm, "pools": [[p, n] for p, n in load.disks_per_pool.items()]})


class RedisGate:
    """``AdmissionGate`` over Redis: one lease set per vault, shared by the fleet."""

    def __init__(
        self, client: redis.Redis, vault_id: str, limits: Callable[[], Limits], ttl: float
    ) -> None:
        self.client, self.limits, self.ttl_ms = client, limits, int(ttl * 1000)
        prefix = f"vmvault:{vault_id}:admission"
        self.keys = [f"{prefix}:leases", f"{prefix}:loads", f"{prefix}:peaks"]
        self._admit = client.register_script(_ADMIT)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._wait = client.register_script(_WAIT)
        self._done_waiting = client.register_script(_DONE_WAITING)
        self.waiting_prefix = f"{prefix}:waiting:"

    def try_admit(self, lease: str, load: JobLoad) -> str | None:
        limits = self.limits()
        doc = json.dumps(
            {
                "max_vms": limits.max_vms,
                "max_disks": limits.max_disks_per_pool,
                "caps": dict(limits.pool_disk_caps),
            }
        )
        why = self._admit(keys=self.keys, args=[lease, _load_doc(load), doc, self.ttl_ms])
        text = why.decode() if isinstance(why, bytes) else str(why or "")
        return text or None

    def renew(self, lease: str, load: JobLoad) -> None:
        if not self._renew(keys=self.keys[:2], args=[lease, _load_doc(load), self.ttl_ms]):
            log.warning("warning: admission lease %s had expired; taken again", lease)

    def release(self, lease: str) -> None:
        self._release(keys=self.keys[:2], args=[lease])

    def wait_turn(self, job_id: int, holder: str) -> bool:
        key = f"{self.waiting_prefix}{job_id}"
        return bool(self._wait(keys=[key], args=[holder, self.ttl_ms]))

    def done_waiting(self, job_id: int, holder: str) -> None:
        self._done_waiting(keys=[f"{self.waiting_prefix}{job_id}"], args=[holder])

    def waiting(self, job_id: int) -> bool:
        return bool(self.client.exists(f"{self.waiting_prefix}{job_id}"))

    def held(self) -> list[JobLoad]:
        """The live leases' loads (for tests and the curious)."""
        self.client.eval(_DROP_EXPIRED, 2, *self.keys[:2])
        loads = []
        for raw in self.client.hvals(self.keys[1]):
            doc = json.loads(raw)
            loads.append(JobLoad(doc["vm"], {p: int(n) for p, n in doc["pools"]}))
        return loads

    def peaks(self) -> dict[str, int]:
        """The most VMs, and disks of each pool ("pool:NAME"), ever admitted at once."""
        raw: dict[Any, Any] = self.client.hgetall(self.keys[2])
        return {k.decode(): int(v) for k, v in raw.items()}


class RedisBucket:
    """A token bucket in Redis, with ``TokenBucket``'s semantics; the wait is slept here."""

    def __init__(self, take: Any, key: str, rate: float, burst: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._take, self.key, self.rate, self.burst = take, key, rate, burst

    def reserve(self, amount: float) -> float:
        try:
            wait = self._take(keys=[self.key], args=[repr(self.rate), repr(self.burst), amount])
        except redis.RedisError as exc:  # Redis down: the job is retried, not failed
            raise FleetUnavailable(f"the fleet's Redis did not answer ({exc})") from None
        return float(wait)

    def consume(self, amount: float, interrupt: Callable[[], None] | None = None) -> None:
        wait_for(self.reserve(amount), interrupt)


class RedisPoolBudget:
    """``engine.budgets.PoolBudget`` over Redis: each pool's egress and request buckets are
    shared by every worker of the fleet (same burst as a process's own buckets)."""

    def __init__(self, client: redis.Redis, vault_id: str) -> None:
        self.prefix = f"vmvault:{vault_id}:budget"
        self._take = client.register_script(_TAKE)

    def buckets(
        self, pool: str, egress_mb_per_s: float, requests_per_second: float
    ) -> tuple[Bucket, Bucket]:
        rate = egress_mb_per_s * 1e6
        return (
            RedisBucket(
                self._take, f"{self.prefix}:{pool}:bytes", rate, max(rate / 10, 4 * 1024 * 1024)
            ),
            RedisBucket(
                self._take,
                f"{self.prefix}:{pool}:requests",
                requests_per_second,
                max(requests_per_second / 10, 1.0),
            ),
        )
