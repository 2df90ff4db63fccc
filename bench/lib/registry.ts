import { clock } from '../clock.js'
import { http } from '../http.js'
import { lazy } from '../lazy.js'
import { pool } from '../pool.js'
import { rateLimitOverhead } from '../rateLimit.js'
import { redis } from '../redis.js'
import type { Benchmark } from './harness.js'

/** Every benchmark, in the order `npm run bench` runs them. */
export const benchmarks: readonly Benchmark[] = [rateLimitOverhead, clock, pool, lazy, http, redis]
