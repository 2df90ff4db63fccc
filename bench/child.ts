/**
 * The child-process entry: runs one case of one benchmark and writes its metrics, with the
 * process's peak RSS, as JSON to the file the parent named. `run.ts` bundles this file to
 * `bench/out/child.mjs` (the library imported from its private build in
 * `node_modules/.cache/rx-fanout-bench-<hash>/dist/`) and spawns it once
 * per case and round, so no case inherits another's heap, JIT state or timers.
 *
 * Usage: node bench/out/child.mjs <benchmark> <case> <params-json> <out-file>
 */
import { writeFileSync } from 'node:fs'
import type { Metrics } from './lib/harness.js'
import { benchmarks } from './lib/registry.js'

const [name, caseName, paramsJson, outFile] = process.argv.slice(2)

async function main(): Promise<number> {
  if (!name || !caseName || paramsJson === undefined || !outFile) {
    console.error('usage: child.mjs <benchmark> <case> <params-json> <out-file>')
    return 2
  }
  let metrics: Metrics
  let code = 0
  try {
    const benchmark = benchmarks.find((b) => b.name === name)
    const run = benchmark?.cases[caseName]
    if (!run) throw new Error(`no case ${name}/${caseName}`)
    metrics = await run(JSON.parse(paramsJson))
  } catch (error) {
    metrics = { problem: `threw: ${error instanceof Error ? error.stack : String(error)}` }
    code = 1
  }
  // KiB on Linux; read last, so it covers the whole run.
  metrics.maxRssKiB = process.resourceUsage().maxRSS
  writeFileSync(outFile, JSON.stringify(metrics))
  return code
}

// Exit explicitly: a competitor may leave timers behind, and the parent waits for exit.
main().then((code) => process.exit(code))
