/**
 * The Lua scripts, one per operation, each atomic in Redis. Times are ms on Redis's clock
 * (`TIME`), unless a test passes an explicit `now`. Numbers travel as strings written with
 * %.17g, so that a reservation's time to act comes back bit for bit (cancel compares it).
 *
 * The bucket state is one hash: t = tokens, l = last update, e = last event (the latest
 * time to act of any reservation, Go's lastEvent), p = paused until, r/b = rate and burst
 * set by setRate/setBurst (else each caller's configured ones). A negative rate means
 * unlimited. The math is Go's x/time/rate, as in the in-process TokenBucket.
 */
// `now` in ms: the explicit time a test passed as ARGV[1], or Redis's own clock.
const NOW = `
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
`

const PRELUDE = `
local key = KEYS[1]
${NOW}local s = redis.call('HMGET', key, 't', 'l', 'e', 'p', 'r', 'b')
local rate = tonumber(s[5]) or tonumber(ARGV[2])
local burst = tonumber(s[6]) or tonumber(ARGV[3])
local tokens = tonumber(s[1])
if tokens == nil then tokens = burst end
local last = tonumber(s[2]) or now
local lastEvent = tonumber(s[3]) or -1
local paused = tonumber(s[4]) or 0
local function f(x) return string.format('%.17g', x) end
local function advance()
  local v = tokens
  if now > last and rate > 0 then v = v + (now - last) * rate / 1000 end
  if rate < 0 then v = burst end
  if v > burst then v = burst end
  return v
end
local function keep(extra)
  -- Long enough to cover the refill to full, the pause and the wait; a rate or burst set
  -- for everyone (r, b) is kept a day past the last use.
  local ttl = 1000 + extra
  if paused > now then ttl = ttl + (paused - now) end
  if rate > 0 and tokens < burst then ttl = ttl + (burst - tokens) * 1000 / rate end
  if s[5] or s[6] then
    ttl = math.max(ttl, 86400000)
  end
  redis.call('PEXPIRE', key, math.ceil(ttl))
end
`

/** ARGV: now|'', rate, burst, n, maxWaitMs (-1 = no limit). → {ok, wait, now, rate, timeToAct} */
export const RESERVE = `${PRELUDE}
local n = tonumber(ARGV[4])
local maxWait = tonumber(ARGV[5])
local wait = 0
if paused > now then wait = paused - now end
if rate < 0 then
  if maxWait >= 0 and wait > maxWait then return {0, f(wait), f(now), f(rate), 'inf'} end
  return {1, f(wait), f(now), f(rate), f(now + wait)}
end
local left = advance() - n
local need = 0
if left < -1e-9 then
  if rate > 0 then need = -left * 1000 / rate else need = -1 end
end
if need < 0 or n > burst or (maxWait >= 0 and math.max(need, wait) > maxWait) then
  return {0, f(math.max(need, wait)), f(now), f(rate), 'inf'}
end
if need > wait then wait = need end
tokens = left
last = now
redis.call('HSET', key, 't', f(tokens), 'l', f(now), 'e', f(now + wait))
keep(wait)
return {1, f(wait), f(now), f(rate), f(now + wait)}
`

/** ARGV: now|'', rate, burst, n, timeToAct, rateThen. Go's CancelAt. → restored tokens */
export const CANCEL = `${PRELUDE}
local n = tonumber(ARGV[4])
local timeToAct = tonumber(ARGV[5])
local rateThen = tonumber(ARGV[6])
-- A rejected reservation (time to act 'inf') took nothing: nothing to give back.
if timeToAct == nil or timeToAct ~= timeToAct or timeToAct == math.huge then return '0' end
if rate < 0 or rateThen < 0 or n == 0 or timeToAct < now then return '0' end
local restore = n
if rateThen > 0 then
  -- Tokens reserved after this one were planned on top of it; none if they act earlier
  -- (after a rate increase, or behind a pause): never more than n comes back.
  local later = lastEvent - timeToAct
  if later < 0 then later = 0 end
  restore = n - later * rateThen / 1000
end
if restore <= 0 then return '0' end
tokens = advance() + restore
if tokens > burst then tokens = burst end
redis.call('HSET', key, 't', f(tokens), 'l', f(now))
if timeToAct == lastEvent and rateThen > 0 then
  local previous = timeToAct - n * 1000 / rateThen
  if previous >= now then redis.call('HSET', key, 'e', f(previous)) end
end
keep(0)
return f(restore)
`

/** ARGV: now|'', rate, burst, newRate|'', newBurst|''. Settles under the old settings. */
export const CONFIGURE = `${PRELUDE}
tokens = advance()
redis.call('HSET', key, 't', f(tokens), 'l', f(now))
if ARGV[4] ~= '' then rate = tonumber(ARGV[4]); s[5] = ARGV[4]; redis.call('HSET', key, 'r', ARGV[4]) end
if ARGV[5] ~= '' then
  burst = tonumber(ARGV[5])
  s[6] = ARGV[5]
  redis.call('HSET', key, 'b', ARGV[5])
  if tokens > burst then tokens = burst; redis.call('HSET', key, 't', f(tokens)) end
end
keep(0)
return {f(tokens), f(now)}
`

/** ARGV: now|'', rate, burst, ms. No grant before now + ms (pauses only extend). */
export const PAUSE = `${PRELUDE}
local untilAt = now + tonumber(ARGV[4])
if untilAt > paused then
  paused = untilAt
  redis.call('HSET', key, 'p', f(paused))
end
if redis.call('HEXISTS', key, 't') == 0 then redis.call('HSET', key, 't', f(tokens), 'l', f(now)) end
keep(0)
return f(paused)
`

/** ARGV: now|'', rate, burst. → {tokens, now, rate, burst, paused} */
export const PEEK = `${PRELUDE}
return {f(advance()), f(now), f(rate), f(burst), f(paused)}
`

/**
 * Semaphore, a sorted set of lease ids scored by expiry. ARGV: now|'', limit, leaseMs, id.
 * Expired leases (a crashed holder's) are reclaimed first. → {granted, retryInMs}
 */
export const ACQUIRE = `
local key = KEYS[1]
${NOW}local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now + lease, ARGV[4])
  redis.call('PEXPIRE', key, math.ceil(lease * 2))
  return {1, '0'}
end
local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, string.format('%.17g', tonumber(first[2]) - now)}
`

/** ARGV: now|'', leaseMs, id. Extends a lease still held. → 1, or 0 if it was lost */
export const RENEW = `
local key = KEYS[1]
${NOW}local lease = tonumber(ARGV[2])
local score = redis.call('ZSCORE', key, ARGV[3])
if not score or tonumber(score) < now then return 0 end
redis.call('ZADD', key, 'XX', now + lease, ARGV[3])
redis.call('PEXPIRE', key, math.ceil(lease * 2))
return 1
`

/** KEYS: set, channel. ARGV: id. Gives a lease back and wakes the waiters. */
export const RELEASE = `
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then redis.call('PUBLISH', KEYS[2], ARGV[1]) end
return removed
`
