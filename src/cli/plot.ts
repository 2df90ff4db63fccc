import type { Verdict } from './demoServer.js'

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;')

/**
 * An SVG timeline of a demo run: request arrivals (cumulative) against the token-bucket
 * envelope `burst + rate·t`, and the in-flight count against its cap.
 */
export function plotSvg(
  verdict: Verdict,
  quota: { rate: number; burst: number; maxInFlight: number },
): string {
  const width = 900
  const left = 60
  const right = 20
  const top1 = 40
  const h1 = 250
  const top2 = top1 + h1 + 50
  const h2 = 120
  const height = top2 + h2 + 40
  const arrivals = verdict.arrivals
  const first = arrivals[0] ?? 0
  const lastTime = Math.max(
    (arrivals[arrivals.length - 1] ?? 0) - first,
    ...verdict.inFlight.map(([t]) => t - first),
    1,
  )
  const x = (t: number) => left + ((t - first) / lastTime) * (width - left - right)
  const maxCount = Math.max(arrivals.length, quota.burst + (quota.rate * lastTime) / 1000)
  const y1 = (n: number) => top1 + h1 - (n / maxCount) * h1
  const maxFlight = Math.max(quota.maxInFlight + 1, ...verdict.inFlight.map(([, n]) => n))
  const y2 = (n: number) => top2 + h2 - (n / maxFlight) * h2

  let steps = `M ${x(first)} ${y1(0)}`
  arrivals.forEach((t, i) => {
    steps += ` H ${x(t).toFixed(1)} V ${y1(i + 1).toFixed(1)}`
  })
  const envelope = `M ${x(first)} ${y1(quota.burst)} L ${x(first + lastTime)} ${y1(quota.burst + (quota.rate * lastTime) / 1000)}`
  let flight = `M ${x(first)} ${y2(0)}`
  for (const [t, n] of verdict.inFlight) {
    if (t < first) continue
    flight += ` H ${x(t).toFixed(1)} V ${y2(n).toFixed(1)}`
  }
  const ticks: string[] = []
  const seconds = Math.ceil(lastTime / 1000)
  const every = Math.max(1, Math.ceil(seconds / 15))
  for (let s = 0; s <= seconds && s * 1000 <= lastTime; s += every) {
    const tx = x(first + s * 1000)
    ticks.push(
      `<line x1="${tx}" y1="${top2 + h2}" x2="${tx}" y2="${top2 + h2 + 5}" stroke="#555"/>` +
        `<text x="${tx}" y="${top2 + h2 + 18}" font-size="11" text-anchor="middle">${s}s</text>`,
    )
  }
  const title = `${verdict.requests} requests · ${verdict.rejected429} × 429 · max ${verdict.maxInFlight} in flight · needs a bucket of ${verdict.requiredCapacity.toFixed(2)} at ${quota.rate}/s`
  return `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">
  <rect width="100%" height="100%" fill="white"/>
  <text x="${left}" y="22" font-size="14" font-weight="bold">${esc(title)}</text>
  <text x="${left}" y="${top1 - 4}" font-size="12"><tspan fill="#2266cc">requests arrived (cumulative)</tspan> under <tspan fill="#d33">the envelope ${quota.burst} + ${quota.rate}·t</tspan> (no line may rise above it)</text>
  <rect x="${left}" y="${top1}" width="${width - left - right}" height="${h1}" fill="none" stroke="#ccc"/>
  <path d="${envelope}" fill="none" stroke="#f2a3a3" stroke-width="6"/>
  <path d="${steps}" fill="none" stroke="#2266cc" stroke-width="1.5"/>
  <text x="${left - 6}" y="${y1(0)}" font-size="11" text-anchor="end">0</text>
  <text x="${left - 6}" y="${y1(arrivals.length) + 4}" font-size="11" text-anchor="end">${arrivals.length}</text>
  <text x="${left}" y="${top2 - 4}" font-size="12">in flight at the server (cap ${quota.maxInFlight})</text>
  <rect x="${left}" y="${top2}" width="${width - left - right}" height="${h2}" fill="none" stroke="#ccc"/>
  <line x1="${left}" y1="${y2(quota.maxInFlight)}" x2="${width - right}" y2="${y2(quota.maxInFlight)}" stroke="#d33" stroke-dasharray="6 4"/>
  <path d="${flight}" fill="none" stroke="#228833" stroke-width="1.2"/>
  <text x="${left - 6}" y="${y2(quota.maxInFlight) + 4}" font-size="11" text-anchor="end">${quota.maxInFlight}</text>
  ${ticks.join('\n  ')}
</svg>
`
}
