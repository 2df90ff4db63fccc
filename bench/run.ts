/**
 * Runs the benchmarks: compiles the library (tsconfig.build.json) into
 * node_modules/.cache/rx-fanout-bench-<hash of the checkout>,
 * bundles `bench/child.ts`, then runs every case of
 * every selected benchmark in a fresh Node process, round after round with the order
 * rotated each round, and prints one Markdown table per benchmark (medians over rounds,
 * ratios within the same run). Exits 1 if a correctness check of ours failed.
 *
 *   npm run bench                      all benchmarks (~8 min)
 *   npm run bench -- pool lazy         only these (rateLimit, clock, pool, lazy, http, redis)
 *   npm run bench -- --quick           small sizes, short windows, one round (~1.5 min)
 *   npm run bench -- --rounds 5        every case this many rounds
 *   npm run bench -- pool --only ratePool      only rows whose id contains "ratePool"
 *   npm run bench -- pool --cpu-prof   children write .cpuprofile files to bench/out/prof/
 *   npm run bench -- --head            benchmark the committed src/ (HEAD), not the work tree
 *   npm run bench -- redis --baseline /work/wt-old   also run "(before)" rows on another
 *                                      src/: a checkout's folder, or a commit (e.g. 1885de9),
 *                                      compiled the same way into a folder of its own
 *   npm run bench -- --report bench/out/last-run.json   re-render saved results, run nothing
 *
 * Raw per-round metrics go to bench/out/last-run.json, the tables to bench/out/last-run.md.
 */
import { execFileSync, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { summarize } from './lib/cpuprofile.js'
import type { Metrics, RunOptions, Spec } from './lib/harness.js'
import { benchmarks } from './lib/registry.js'

const benchDir = dirname(fileURLToPath(import.meta.url))
const root = resolve(benchDir, '..')
const outDir = join(benchDir, 'out')
const childPath = join(outDir, 'child.mjs')
const faultsPath = join(outDir, 'faults.mjs')
// Outside bench/ so that the project's typecheck (which includes bench/) never sees the copy.
// One per checkout: git worktrees that share one node_modules must not build into (and run)
// each other's copy halfway through a run.
const libDir = join(
  root,
  'node_modules',
  '.cache',
  `rx-fanout-bench-${createHash('sha256').update(root).digest('hex').slice(0, 8)}`,
)
// --baseline's build, beside it.
const baselineDir = `${libDir}-baseline`

interface Cli {
  names: string[]
  options: RunOptions
  only: string | null
  cpuProf: boolean
  head: boolean
  /** --baseline: a folder with a src/ (a checkout), or a commit of this repository. */
  baseline: string | null
  report: string | null
}

function parseArgs(argv: string[]): Cli {
  const cli: Cli = {
    names: [],
    options: { quick: false, rounds: null },
    only: null,
    cpuProf: false,
    head: false,
    baseline: null,
    report: null,
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (arg === '--quick') cli.options.quick = true
    else if (arg === '--cpu-prof') cli.cpuProf = true
    else if (arg === '--head') cli.head = true
    else if (arg === '--report') cli.report = argv[++i] ?? null
    else if (arg === '--baseline') {
      cli.baseline = argv[++i] ?? null
      if (cli.baseline === null) throw new Error('--baseline wants a folder or a commit')
    } else if (arg === '--rounds') cli.options.rounds = Number(argv[++i])
    else if (arg === '--only') cli.only = argv[++i] ?? null
    else if (arg.startsWith('-')) throw new Error(`unknown flag ${arg}`)
    else cli.names.push(arg)
  }
  const known = benchmarks.map((b) => b.name)
  for (const name of cli.names) {
    if (!known.includes(name))
      throw new Error(`unknown benchmark ${name}; known: ${known.join(', ')}`)
  }
  if (cli.options.rounds !== null && !(cli.options.rounds >= 1)) {
    throw new Error('--rounds wants an integer >= 1')
  }
  return cli
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { cwd: root, encoding: 'utf8' }).trim()
  } catch {
    return '?'
  }
}

/** Where a build's src/ comes from. */
type Source =
  | { kind: 'worktree' }
  | { kind: 'head' }
  | { kind: 'dir'; dir: string }
  | { kind: 'commit'; commit: string }

/**
 * Compiles the library with the project's own tsconfig.build.json into a private folder,
 * from a copy of src/ (the working tree, HEAD with --head, or the baseline's): other work
 * in progress, or someone else's `npm run build`, cannot change the code under a run
 * halfway through.
 */
function buildLibrary(snap: string, source: Source): void {
  rmSync(snap, { recursive: true, force: true })
  mkdirSync(snap, { recursive: true })
  if (source.kind === 'head' || source.kind === 'commit') {
    const rev = source.kind === 'head' ? 'HEAD' : source.commit
    execFileSync('bash', ['-c', `git archive --format=tar '${rev}' src | tar -x -C '${snap}'`], {
      cwd: root,
    })
  } else {
    const from = source.kind === 'dir' ? source.dir : root
    cpSync(join(from, 'src'), join(snap, 'src'), { recursive: true })
  }
  writeFileSync(
    join(snap, 'tsconfig.json'),
    JSON.stringify({
      extends: relative(snap, join(root, 'tsconfig.build.json')),
      compilerOptions: {
        rootDir: 'src',
        outDir: 'dist',
        declaration: false,
        declarationMap: false,
        sourceMap: false,
      },
      include: ['src'],
      exclude: ['src/**/*.test.ts'],
    }),
  )
  try {
    execFileSync(join(root, 'node_modules', '.bin', 'tsc'), ['-p', join(snap, 'tsconfig.json')], {
      cwd: root,
      stdio: 'inherit',
    })
  } catch {
    console.error('warning: tsc reported errors; benchmarking what it emitted')
  }
}

/** --baseline's argument as a source of src/, and how the reports name it. */
function baselineSource(arg: string): { source: Source; label: string } {
  const dir = resolve(arg)
  if (existsSync(join(dir, 'src'))) {
    const git = (args: string[]) => {
      try {
        return execFileSync('git', ['-C', dir, ...args], { encoding: 'utf8' }).trim()
      } catch {
        return '?'
      }
    }
    const dirty = git(['status', '--porcelain', '--', 'src']).split('\n').filter(Boolean)
    const commit = git(['rev-parse', '--short', 'HEAD'])
    return {
      source: { kind: 'dir', dir },
      label:
        `src/ of ${dir} (commit ${commit}` +
        `${dirty.length ? ` + ${dirty.length} uncommitted change(s)` : ''})`,
    }
  }
  const commit = sh('git', ['rev-parse', '--verify', '--short', `${arg}^{commit}`])
  if (commit === '?') throw new Error(`--baseline ${arg}: neither a folder with src/ nor a commit`)
  return { source: { kind: 'commit', commit }, label: `src/ of commit ${commit}` }
}

async function prepare(head: boolean, baseline: Source | null): Promise<void> {
  mkdirSync(outDir, { recursive: true })
  buildLibrary(libDir, head ? { kind: 'head' } : { kind: 'worktree' })
  if (baseline !== null) buildLibrary(baselineDir, baseline)
  // The fault harness apart (see lib/faults.ts): it imports ioredis at its top.
  await build({
    entryPoints: [join(benchDir, 'lib', 'faults.ts')],
    outfile: faultsPath,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    logLevel: 'warning',
  })
  await build({
    entryPoints: [join(benchDir, 'child.ts')],
    outfile: childPath,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    logLevel: 'warning',
    plugins: [
      {
        name: 'rx-fanout-from-dist',
        setup(b) {
          // ../src/index.js, ../src/http/index.js, ../src/redis/index.js
          b.onResolve({ filter: /\/src\/(?:(?:http|redis)\/)?index\.js$/ }, (args) => ({
            path: relative(outDir, join(libDir, 'dist', args.path.replace(/^.*\/src\//, ''))),
            external: true,
          }))
          b.onResolve({ filter: /\/faults\.js$/ }, (args) =>
            resolve(args.resolveDir, args.path) === join(benchDir, 'lib', 'faults.js')
              ? { path: `./${relative(outDir, faultsPath)}`, external: true }
              : undefined,
          )
        },
      },
    ],
  })
}

interface Outcome {
  metrics: Metrics
  ms: number
}

function runChild(benchmark: string, spec: Spec, cpuProf: boolean): Promise<Outcome> {
  const resultFile = join(outDir, `result-${process.pid}.json`)
  rmSync(resultFile, { force: true })
  const flags = cpuProf
    ? [
        '--cpu-prof',
        `--cpu-prof-dir=${join(outDir, 'prof')}`,
        `--cpu-prof-name=${benchmark}-${spec.id}-${Date.now()}.cpuprofile`,
      ]
    : []
  const args = [
    ...flags,
    childPath,
    benchmark,
    spec.caseName,
    JSON.stringify(spec.params),
    resultFile,
  ]
  const started = performance.now()
  return new Promise((done) => {
    const child = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000)
    })
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, spec.timeoutMs)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      const ms = performance.now() - started
      let metrics: Metrics
      try {
        metrics = JSON.parse(readFileSync(resultFile, 'utf8')) as Metrics
      } catch {
        metrics = {
          problem: timedOut
            ? `killed after ${spec.timeoutMs} ms`
            : `exited ${code ?? signal} without a result: ${stderr.trim().split('\n').slice(-3).join(' / ')}`,
        }
      }
      if (code !== 0 && !timedOut && typeof metrics.problem !== 'string') {
        metrics.problem = `exited ${code ?? signal}`
      }
      done({ metrics, ms })
    })
  })
}

function describe(metrics: Metrics): string {
  const parts: string[] = []
  for (const key of ['wallMs', 'nsPerValue', 'achievedPerSec', 'done', 'jobsPerSec']) {
    const v = metrics[key]
    if (typeof v === 'number') parts.push(`${key}=${v >= 100 ? v.toFixed(0) : v.toPrecision(3)}`)
  }
  if (typeof metrics.maxRssKiB === 'number')
    parts.push(`rss=${(metrics.maxRssKiB / 1024).toFixed(0)}MB`)
  if (typeof metrics.problem === 'string') parts.push(`PROBLEM: ${metrics.problem.split('\n')[0]}`)
  return parts.join(' ')
}

/** Re-renders the tables of a saved last-run.json (after a change to a report). */
function rerender(file: string): void {
  const saved = JSON.parse(readFileSync(file, 'utf8')) as {
    machine: string
    options?: RunOptions
    raw: Record<string, Record<string, Metrics[]>>
  }
  const options = saved.options ?? { quick: false, rounds: null }
  console.log(saved.machine)
  for (const benchmark of benchmarks) {
    const raw = saved.raw[benchmark.name]
    if (!raw) continue
    const results = new Map(Object.entries(raw))
    console.log(`\n## ${benchmark.title}\n\n${benchmark.report(results, options)}`)
  }
}

async function main(): Promise<void> {
  const cli = parseArgs(process.argv.slice(2))
  if (cli.report !== null) {
    rerender(cli.report)
    return
  }
  const selected = cli.names.length
    ? benchmarks.filter((b) => cli.names.includes(b.name))
    : benchmarks
  const startedAt = Date.now()
  const baseline = cli.baseline === null ? null : baselineSource(cli.baseline)
  await prepare(cli.head, baseline?.source ?? null)
  if (baseline !== null) {
    cli.options.baseline = { dist: join(baselineDir, 'dist'), label: baseline.label }
  }
  if (cli.cpuProf) rmSync(join(outDir, 'prof'), { recursive: true, force: true })

  const head = sh('git', ['rev-parse', '--short', 'HEAD'])
  const dirty = sh('git', ['status', '--porcelain', '--', 'src']).split('\n').filter(Boolean)
  const machine = [
    `nproc ${cpus().length}`,
    `node ${process.version}`,
    `CPU ${cpus()[0]?.model ?? '?'}`,
    cli.head
      ? `src/ of commit ${head} (--head)`
      : `commit ${head}${dirty.length ? ` + ${dirty.length} uncommitted change(s) in src/` : ''}`,
    ...(baseline ? [`baseline: ${baseline.label}`] : []),
    `args: ${process.argv.slice(2).join(' ') || '(none)'}`,
  ].join(' · ')
  console.log(`\n${machine}\n`)

  const raw: Record<string, Record<string, Metrics[]>> = {}
  const sections: string[] = [`# Benchmark run ${new Date(startedAt).toISOString()}`, '', machine]
  let failures = 0

  for (const benchmark of selected) {
    const specs = benchmark
      .plan(cli.options)
      .filter((spec) => cli.only === null || spec.id.includes(cli.only))
    const results = new Map<string, Metrics[]>()
    const rounds = Math.max(0, ...specs.map((s) => s.rounds))
    const benchStart = Date.now()
    for (let round = 0; round < rounds; round++) {
      const active = specs.filter((s) => s.rounds > round)
      // Rotate the order each round so no case always runs first (or right after a heavy one).
      const shift = active.length ? round % active.length : 0
      const order = [...active.slice(shift), ...active.slice(0, shift)]
      for (const spec of order) {
        const { metrics, ms } = await runChild(benchmark.name, spec, cli.cpuProf)
        const list = results.get(spec.id) ?? []
        list.push(metrics)
        results.set(spec.id, list)
        console.error(
          `[${benchmark.name}] round ${round + 1}/${rounds} ${spec.id} (${(ms / 1000).toFixed(1)} s): ${describe(metrics)}`,
        )
        if (spec.ours && typeof metrics.problem === 'string') failures++
      }
    }
    raw[benchmark.name] = Object.fromEntries(results)
    const report = benchmark.report(results, cli.options)
    const section = `## ${benchmark.title}\n\n(${((Date.now() - benchStart) / 1000).toFixed(0)} s)\n\n${report}`
    sections.push('', section)
    console.log(`\n${section}\n`)
  }

  if (cli.cpuProf) {
    const profDir = join(outDir, 'prof')
    for (const file of readdirSync(profDir)
      .filter((f) => f.endsWith('.cpuprofile'))
      .sort()) {
      console.log(`\n${summarize(join(profDir, file))}`)
    }
  }

  const total = `Total: ${((Date.now() - startedAt) / 1000).toFixed(0)} s`
  sections.push('', total)
  console.log(total)
  writeFileSync(join(outDir, 'last-run.md'), `${sections.join('\n')}\n`)
  writeFileSync(
    join(outDir, 'last-run.json'),
    JSON.stringify({ machine, options: cli.options, raw }, null, 1),
  )
  rmSync(join(outDir, `result-${process.pid}.json`), { force: true })
  if (failures > 0) {
    console.error(`\n${failures} correctness failure(s) in rx-fanout's rows (see ⚠ above)`)
    process.exitCode = 1
  }
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
