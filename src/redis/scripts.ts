/**
 * The Lua scripts, one per operation, each atomic in Redis. Times are ms on Redis's clock
 * (`TIME`), unless a test passes an explicit `now`. Numbers travel as strings written with
 * %.17g, so that a reservation's time to act comes back bit for bit (cancel compares it).
 *
 * Every key of one bucket or semaphore carries the same hash tag (`{name}:…`), so every
 * script touches one hash slot and runs on a Redis Cluster too. Channels are passed as
 * arguments, never as keys.
 *
 * ## The bucket: one hash
 * t tokens · l last update · e last event (the latest time to act of any reservation, Go's
 * lastEvent) · p paused until · cr/cb the configured rate and burst (one key, one quota) ·
 * or/ob/ou a temporary override of rate and/or burst and when it ends · i the incarnation
 * of this state · g the run_id of the Redis that last checked it · gv until when that
 * check holds. A negative rate means unlimited. The math is Go's x/time/rate, as in the
 * in-process TokenBucket.
 *
 * ## Data loss
 * A state that Redis lost (a restart without persistence, FLUSHALL, a failover to an
 * empty or lagging replica) must not come back as a full bucket or an empty lease set.
 * The signals that survive the loss: Redis's own run_id and uptime (read with INFO at most
 * once a second per key: `gv`), and what the calling client remembers (the incarnation it
 * last saw, and until when the state was to live). See `establish`.
 */

// `now` in ms: the explicit time a test passed as ARGV[1], or Redis's own clock.
const NOW = `
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function f(x) return string.format('%.17g', x) end
`

// Redis's run_id and uptime (s); ARGV[6], when given, stands for the uptime (tests).
const SERVER = `
-- ARGV[7]: 'safe'|'full' (cold start), with '!' when the client saw its connection break
-- since its last call: then the run_id check is made now, whatever gv says (gv is
-- replicated, and a replica promoted within its second would otherwise trust it).
local coldFull = string.sub(ARGV[7], 1, 4) == 'full'
local forceCheck = string.sub(ARGV[7], -1) == '!'
local function server()
  local info = redis.call('INFO', 'server')
  local runId = string.match(info, 'run_id:(%w+)') or ''
  local uptime = tonumber(string.match(info, 'uptime_in_seconds:(%d+)')) or 0
  if ARGV[6] ~= '' then uptime = tonumber(ARGV[6]) end
  return runId, uptime
end
`

/**
 * Common to the bucket scripts. ARGV: [1] now|'' · [2] configured rate (-1 = unlimited) ·
 * [3] configured burst · [4] the incarnation the client knows|'' · [5] until when the
 * client expects the state to live (Redis ms, 0 = no idea) · [6] uptime|'' (tests) ·
 * [7] 'safe'|'full' (cold start) · [8] the latest time to act the client has seen
 * reserved (Redis ms, 0 = none) · then the operation's own arguments from ARGV[9].
 */
const BUCKET = `
local key = KEYS[1]
${NOW}${SERVER}
local s = redis.call('HMGET', key, 't', 'l', 'e', 'p', 'cr', 'cb', 'or', 'ob', 'ou', 'i', 'g', 'gv', 'k')
-- Every token ever charged here: how a late give-back is bounded (see RESERVE's debt).
local charged = tonumber(s[13]) or 0
local exists = s[1] ~= false
local crate = tonumber(s[5]) or tonumber(ARGV[2])
local cburst = tonumber(s[6]) or tonumber(ARGV[3])
-- The stored override, even if it ended since the last update (advance needs it).
local srate = tonumber(s[7])
local sburst = tonumber(s[8])
local ou = tonumber(s[9]) or 0
local orate, oburst = nil, nil
if ou > now then orate = srate; oburst = tonumber(s[8]) end
local rate = orate or crate
local burst = oburst or cburst
local tokens = tonumber(s[1]) or burst
local last = tonumber(s[2]) or now
local lastEvent = tonumber(s[3]) or -1
local paused = tonumber(s[4]) or 0
local inc = s[10] or ''

local function gain(ms, r)
  if ms <= 0 then return 0 end
  if r < 0 then return math.huge end
  return ms * r / 1000
end

-- Tokens at now, without changing state: the override's rate (and cap) until it ended,
-- the configured ones after; the cap on every read.
local function advance()
  local v = tokens
  if now > last then
    if (srate or sburst) and ou > last then
      local split = math.min(now, ou)
      v = v + gain(split - last, srate or crate)
      if sburst and v > sburst then v = sburst end
      v = v + gain(now - split, crate)
    else
      v = v + gain(now - last, crate)
    end
  end
  if rate < 0 or v > burst then v = burst end
  return v
end

-- Ms from now until d more tokens have come in (the override may end on the way).
local function waitFor(d)
  if d <= 0 or rate < 0 then return 0 end
  if orate then
    if orate < 0 then return 0 end
    local g = gain(ou - now, orate)
    if d <= g then return d * 1000 / orate end
    if crate < 0 then return ou - now end
    return (ou - now) + (d - g) * 1000 / crate
  end
  return d * 1000 / rate
end

-- The state is checked against Redis itself at most once a second: a missing hash may
-- have been lost, and one written under another Redis (a restart from a snapshot, a
-- failover) may be stale. Either way it must not grant more than the envelope allows:
--  * missing, and the client saw it alive until later: lost just now, so empty now, and
--    in debt until the latest time to act the client saw reserved (the reservations
--    made on the lost state, every client's, act until then: their debt is not lost);
--  * missing, on a Redis younger than a refill: as if it had been empty when Redis
--    started (the cold start; 'full' trusts that a missing key was never used);
--  * missing otherwise: new, or idled out past its TTL, so full (Go's start);
--  * written under another run_id: no tokens now, its debt kept.
-- A new incarnation (i) tells clients that reservations made before it are gone.
local function establish()
  if exists and inc ~= '' and not forceCheck and now < (tonumber(s[12]) or 0) then return end
  local runId, uptime = server()
  if not exists then
    local initial = burst
    if ARGV[4] ~= '' and tonumber(ARGV[5]) > now then
      initial = 0
      local seen = tonumber(ARGV[8]) or 0
      if seen > now and rate >= 0 then initial = -gain(seen - now, rate) end
    elseif not coldFull then
      local cold = gain(uptime * 1000, rate)
      if cold < initial then initial = cold end
    end
    tokens = initial
    last = now
    inc = runId .. ':' .. f(now)
  elseif s[11] and s[11] ~= runId then
    tokens = math.min(advance(), 0)
    last = now
    inc = runId .. ':' .. f(now)
  elseif inc == '' then
    inc = runId .. ':' .. f(now)
  end
  redis.call('HSET', key, 'i', inc, 'g', runId, 'gv', f(now + 1000), 't', f(tokens), 'l', f(last))
  if not s[5] then redis.call('HSET', key, 'cr', ARGV[2], 'cb', ARGV[3]) end
  exists = true
end

-- Long enough to cover the refill to full, the pause, the wait and the override: a key
-- that expires is one whose state is a full, unpaused bucket. Returns the expiry instant.
local function keep(extra)
  local ttl = 1000 + extra
  if paused > now then ttl = ttl + (paused - now) end
  if tokens < burst then ttl = ttl + waitFor(burst - tokens) end
  if orate or oburst then ttl = math.max(ttl, ou - now + 1000) end
  ttl = math.ceil(ttl)
  redis.call('PEXPIRE', key, ttl)
  return now + ttl
end

local function conflict()
  if s[5] and (tonumber(s[5]) ~= tonumber(ARGV[2]) or tonumber(s[6]) ~= tonumber(ARGV[3])) then
    return {'conflict', s[5], s[6]}
  end
  return nil
end
`

/**
 * Reserves for several waiters of one process at once, in their order, each going into
 * debt if need be (Go's reserveN, applied in turn). ARGV from [9]: check ('1': refuse a
 * configuration that differs from the stored one) · debt (tokens taken first: granted
 * locally while Redis was away, or a cost settled after the fact; negative gives back, up
 * to the burst) · maxWait of the first waiter (-1 = none) · horizon (the most a later
 * waiter may wait to be reserved now; the first that can't, and all after it, are not) ·
 * confirm (an incarnation: if the state is still that one, answer 'confirmed' and reserve
 * nothing) · then n of each waiter.
 *
 * → {'ok', now, rateThen, inc, aliveUntil, burst, overrideEnds, needed, charged before the
 *   waiters, wait1, wait2, …}
 *   (fewer waits than waiters when the rest were not reserved; none when the first was
 *   not ok, and then `needed` is the wait it would have needed, -1 if never), or
 *   {'confirmed', now, inc, aliveUntil}, or {'conflict', rate, burst}.
 */
export const RESERVE = `${BUCKET}
if ARGV[9] == '1' then
  local c = conflict()
  if c then return c end
end
establish()
if ARGV[13] ~= '' and ARGV[13] == inc then
  return {'confirmed', f(now), inc, f(now + redis.call('PTTL', key))}
end
tokens = advance()
last = now
-- debt, or 'debt:mark' for a give-back (a negative debt) of a grant marked 'mark' (the
-- charged count right after it): at most the headroom the bucket had since — its level
-- since was at most the level now plus what was charged since. Without a mark, nothing.
local debtText, markText = string.match(ARGV[10], '^([^:]*):?(.*)$')
local debt = tonumber(debtText) or 0
if debt < 0 then
  local mark = tonumber(markText)
  local room = 0
  if mark then room = burst - math.min(burst, tokens + math.max(0, charged - mark)) end
  debt = -math.min(-debt, math.max(0, room))
end
-- Nothing is written unless something is taken: a refused reservation changes nothing
-- (not even the last update, when the clock went back).
local changed = debt ~= 0
if changed then
  tokens = tokens - debt
  if tokens > burst then tokens = burst end
  if debt > 0 then charged = charged + debt end
end
local chargedBefore = charged
local maxWait = tonumber(ARGV[11])
local horizon = tonumber(ARGV[12])
local pausedFor = 0
if paused > now then pausedFor = paused - now end
local out = {'ok', f(now), f(rate), inc, '', f(burst), f(ou), '0', f(chargedBefore)}
local longest = 0
for j = 14, #ARGV do
  local n = tonumber(ARGV[j])
  local limit = maxWait
  if j > 14 then limit = horizon end
  local wait = pausedFor
  local left = tokens
  if rate >= 0 then
    left = tokens - n
    if left < -1e-9 then wait = math.max(wait, waitFor(-left)) end
    if n > burst then
      if j == 14 then out[8] = '-1' end
      break
    end
  end
  if limit >= 0 and wait > limit then
    if j == 14 then out[8] = f(wait) end
    break
  end
  tokens = left
  if rate >= 0 then
    lastEvent = now + wait
    charged = charged + n
    changed = true
  end
  -- Only the wait: the client adds it to now (both exact in %.17g) for the time to act.
  if wait == 0 then out[#out + 1] = '0' else out[#out + 1] = f(wait) end
  if wait > longest then longest = wait end
end
if changed then
  redis.call('HSET', key, 't', f(tokens), 'l', f(now), 'e', f(lastEvent), 'k', f(charged))
end
out[5] = f(keep(longest))
return out
`

/**
 * Go's CancelAt. ARGV from [9]: the reservation's incarnation · n · timeToAct · rateThen.
 * Nothing comes back to a state that is not the one reserved from. → restored tokens
 */
export const CANCEL = `${BUCKET}
local timeToAct = tonumber(ARGV[11])
local rateThen = tonumber(ARGV[12])
local n = tonumber(ARGV[10])
if not exists or inc ~= ARGV[9] then return '0' end
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

/**
 * A temporary override of the rate and/or the burst, for everyone, until now + forMs
 * (settled under the old settings first). The configured values come back by themselves
 * when it ends. ARGV from [9]: rate|'' · burst|'' · forMs (0 = end the override now).
 * → {tokens, now}
 */
export const CONFIGURE = `${BUCKET}
establish()
tokens = advance()
last = now
local forMs = tonumber(ARGV[11])
if forMs <= 0 then
  orate = nil
  oburst = nil
  redis.call('HDEL', key, 'or', 'ob', 'ou')
else
  if ARGV[9] ~= '' then orate = tonumber(ARGV[9]) end
  if ARGV[10] ~= '' then oburst = tonumber(ARGV[10]) end
  ou = now + forMs
  redis.call('HSET', key, 'ou', f(ou))
  if orate then redis.call('HSET', key, 'or', f(orate)) else redis.call('HDEL', key, 'or') end
  if oburst then redis.call('HSET', key, 'ob', f(oburst)) else redis.call('HDEL', key, 'ob') end
end
rate = orate or crate
burst = oburst or cburst
if rate < 0 or tokens > burst then tokens = burst end
redis.call('HSET', key, 't', f(tokens), 'l', f(now))
keep(0)
return {f(tokens), f(now)}
`

/** No grant before now + ms (pauses only extend). ARGV from [9]: ms. → paused until */
export const PAUSE = `${BUCKET}
establish()
local untilAt = now + tonumber(ARGV[9])
if untilAt > paused then
  paused = untilAt
  redis.call('HSET', key, 'p', f(paused))
end
tokens = advance()
redis.call('HSET', key, 't', f(tokens), 'l', f(now))
keep(0)
return f(paused)
`

/** → {tokens, now, rate, burst, paused, configured rate, configured burst, override ends} */
export const PEEK = `${BUCKET}
return {f(advance()), f(now), f(rate), f(burst), f(paused), f(crate), f(cburst), f(ou)}
`

/**
 * Common to the semaphore scripts. KEYS: [1] the lease set (ids scored by expiry),
 * [2] its meta hash (cl configured limit · i incarnation · g/gv as for the bucket · q no
 * grant before this instant). ARGV: [1] now|'' · [2] limit · [3] leaseMs · [4] the
 * incarnation the client knows|'' · [5] until when it expects the meta to live · [6]
 * uptime|'' · [7] 'safe'|'full' · then the operation's own from [8].
 */
const SEMAPHORE = `
local set = KEYS[1]
local metaKey = KEYS[2]
${NOW}${SERVER}
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local m = redis.call('HMGET', metaKey, 'cl', 'i', 'g', 'gv', 'q')
local exists = m[2] ~= false
local inc = m[2] or ''
local quiet = tonumber(m[5]) or 0

-- Leases lost with the data have holders that still run until they notice (at most
-- leaseMs after their last renewal): no lease is granted before they have all stopped.
local function establish()
  if exists and not forceCheck and now < (tonumber(m[4]) or 0) then return end
  local runId, uptime = server()
  if not exists then
    if ARGV[4] ~= '' and tonumber(ARGV[5]) > now then
      quiet = math.max(quiet, now + lease)
    elseif not coldFull and uptime * 1000 < lease then
      quiet = math.max(quiet, now - uptime * 1000 + lease)
    end
    inc = runId .. ':' .. f(now)
  elseif m[3] ~= runId then
    quiet = math.max(quiet, now + lease)
    inc = runId .. ':' .. f(now)
  end
  redis.call('HSET', metaKey, 'i', inc, 'g', runId, 'gv', f(now + 1000), 'q', f(quiet))
  if not m[1] then redis.call('HSET', metaKey, 'cl', ARGV[2]) end
  exists = true
end

-- The meta outlives every lease (and the quiet time): a missing meta means idle or lost.
local function keepMeta()
  local ttl = math.ceil(math.max(3 * lease, quiet - now + lease))
  if redis.call('PTTL', metaKey) < ttl then redis.call('PEXPIRE', metaKey, ttl) end
  return now + ttl
end
`

/**
 * ARGV from [8]: check ('1': refuse a limit that differs from the stored one) · lease id.
 * Expired leases (a crashed holder's) are reclaimed first.
 * → {'ok', expiresAt, inc, aliveUntil, now} · {'wait', retryInMs, inc, aliveUntil, now} ·
 *   {'conflict', limit}
 */
export const ACQUIRE = `${SEMAPHORE}
if ARGV[8] == '1' and m[1] and tonumber(m[1]) ~= limit then return {'conflict', m[1]} end
establish()
local alive = keepMeta()
redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
if quiet > now then return {'wait', f(quiet - now), inc, f(alive), f(now)} end
if redis.call('ZCARD', set) < limit then
  redis.call('ZADD', set, now + lease, ARGV[9])
  redis.call('PEXPIRE', set, math.ceil(lease * 2))
  return {'ok', f(now + lease), inc, f(alive), f(now)}
end
local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
return {'wait', f(tonumber(first[2]) - now), inc, f(alive), f(now)}
`

/**
 * Extends leases still held. ARGV from [8]: ids. A meta found missing while leases are
 * renewed was lost (a held lease keeps it alive): no grant for leaseMs, whoever asks.
 * → {now, aliveUntil, kept1, kept2, …} (1 kept, 0 lost: expired or gone)
 */
export const RENEW = `${SEMAPHORE}
if not exists then
  quiet = now + lease
  redis.call('HSET', metaKey, 'q', f(quiet), 'i', 'lost:' .. f(now), 'g', '', 'gv', '0')
end
local out = {f(now), f(keepMeta())}
local any = false
for j = 8, #ARGV do
  local score = redis.call('ZSCORE', set, ARGV[j])
  if score and tonumber(score) >= now then
    redis.call('ZADD', set, 'XX', now + lease, ARGV[j])
    out[#out + 1] = 1
    any = true
  else
    out[#out + 1] = 0
  end
end
if any then redis.call('PEXPIRE', set, math.ceil(lease * 2)) end
return out
`

/** KEYS: the lease set. ARGV: [1] channel · [2] id. Gives a lease back, wakes the waiters. */
export const RELEASE = `
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
if removed == 1 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return removed
`
