/**
 * Summarises a V8 `.cpuprofile` (from `node --cpu-prof`): self time per function, the
 * heaviest first. `run.ts --cpu-prof` prints this for every profile a child wrote.
 */
import { readFileSync } from 'node:fs'

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
}

interface Profile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

export function summarize(file: string, top = 15): string {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const selfUs = new Map<string, number>()
  let totalUs = 0
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0
    totalUs += dt
    const frame = byId.get(id)?.callFrame
    if (!frame) return
    const where = frame.url
      ? `${frame.url.split('/').slice(-2).join('/')}:${frame.lineNumber + 1}`
      : ''
    const key = `${frame.functionName || '(anonymous)'} ${where}`.trim()
    selfUs.set(key, (selfUs.get(key) ?? 0) + dt)
  })
  const lines = [...selfUs]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(
      ([key, us]) =>
        `${(us / 1000).toFixed(1).padStart(8)} ms ${((100 * us) / totalUs).toFixed(1).padStart(5)} %  ${key}`,
    )
  return [
    `${file} (${(totalUs / 1000).toFixed(0)} ms sampled)`,
    ...lines,
    '  self time by file:',
    ...byFile(profile, byId, totalUs, top),
  ].join('\n')
}

/** Where a frame's code lives: `undici/lib/…`, our `dist/…` file, `node:…`, or a V8 bucket. */
function home(url: string, functionName: string): string {
  if (!url) return `(${functionName.replace(/[()]/g, '') || 'native'})`
  const dist = /rx-fanout-bench(?:-[0-9a-f]+)?(-baseline)?\/(dist\/.*)$/.exec(url)
  if (dist) return `${dist[1] ? 'baseline ' : ''}${dist[2]}`
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(url)
  if (pkg) return `${pkg[1]}/${pkg[2]}`
  return url.replace(/^file:\/\/.*\/bench\/out\//, 'bench/out/')
}

function byFile(
  profile: Profile,
  byId: Map<number, ProfileNode>,
  totalUs: number,
  top: number,
): string[] {
  const selfUs = new Map<string, number>()
  profile.samples.forEach((id, i) => {
    const frame = byId.get(id)?.callFrame
    if (!frame) return
    const key = home(frame.url, frame.functionName)
    selfUs.set(key, (selfUs.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0))
  })
  return [...selfUs]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(
      ([key, us]) =>
        `${(us / 1000).toFixed(1).padStart(8)} ms ${((100 * us) / totalUs).toFixed(1).padStart(5)} %  ${key}`,
    )
}
