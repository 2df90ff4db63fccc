#!/usr/bin/env node
// Package checks, run after `npm run build`:
//   1. `npm pack` into a temp dir
//   2. publint on the tarball (errors fail, warnings are printed)
//   3. @arethetypeswrong/cli on the tarball with the esm-only profile (the package is ESM-only)
//   4. browser bundle of the core entry (dist/index.js) with esbuild, rxjs external:
//      fail on any `node:` import or Node builtin, print min and min+gz sizes
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { builtinModules } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'
import { build } from 'esbuild'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const bin = (name) => join(root, 'node_modules', '.bin', name)
const coreEntry = join(root, 'dist', 'index.js')

class CheckError extends Error {}

const fail = (message) => {
  throw new CheckError(message)
}

const step = (title) => console.log(`\n--- ${title}`)

const run = (cmd, args, options = {}) => {
  const res = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', stdio: 'inherit', ...options })
  if (res.error) fail(`could not run ${cmd}: ${res.error.message}`)
  return res
}

const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]))
// `fs/promises` etc. are covered through their first segment.
const isNodeBuiltin = (spec) => spec.startsWith('node:') || builtins.has(spec.split('/')[0] ?? '')

const kib = (bytes) => `${(bytes / 1024).toFixed(1)} KiB`

function checkBuildOutput() {
  if (!existsSync(coreEntry)) {
    fail(`${relative(root, coreEntry)} not found: run \`npm run build\` before check:package`)
  }
}

function pack(tmp) {
  step('npm pack')
  const res = run('npm', ['pack', '--json', '--pack-destination', tmp], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  if (res.status !== 0) fail(`npm pack failed (exit ${res.status})`)
  const tarballs = readdirSync(tmp).filter((f) => f.endsWith('.tgz'))
  if (tarballs.length !== 1) fail(`expected one tarball in ${tmp}, found ${tarballs.length}`)
  const tarball = join(tmp, tarballs[0])

  // npm pack --json prints an array with one entry; lifecycle output (if any) may precede it.
  const jsonStart = res.stdout.indexOf('[')
  let files = []
  try {
    files = JSON.parse(res.stdout.slice(jsonStart))[0].files.map((f) => f.path)
  } catch {
    fail(`could not parse \`npm pack --json\` output:\n${res.stdout}`)
  }
  console.log(`${tarballs[0]}: ${files.length} files`)
  if (!files.some((f) => f.endsWith('.d.ts'))) {
    // attw reports an untyped package without failing, so check for declarations here.
    fail('the packed tarball contains no .d.ts files')
  }
  return tarball
}

function publint(tarball) {
  step('publint')
  const res = run(bin('publint'), ['run', tarball])
  if (res.status !== 0) fail(`publint reported errors (exit ${res.status})`)
}

function attw(tarball) {
  step('attw --profile esm-only')
  const res = run(bin('attw'), [tarball, '--profile', 'esm-only', '--no-emoji'], {
    env: { ...process.env, FORCE_COLOR: process.env.FORCE_COLOR ?? '0' },
  })
  if (res.status !== 0) fail(`@arethetypeswrong/cli reported problems (exit ${res.status})`)
}

async function browserBundle() {
  step('browser bundle (esbuild)')
  const offenders = []
  const flagBuiltins = {
    name: 'flag-node-builtins',
    setup(b) {
      b.onResolve({ filter: /.*/ }, (args) => {
        if (args.kind === 'entry-point' || !isNodeBuiltin(args.path)) return undefined
        offenders.push(`${args.path} (imported by ${relative(root, args.importer)})`)
        return { path: args.path, external: true }
      })
    },
  }

  let result
  try {
    result = await build({
      absWorkingDir: root,
      entryPoints: [coreEntry],
      platform: 'browser',
      format: 'esm',
      bundle: true,
      minify: true,
      external: ['rxjs', 'rxjs/*'],
      write: false,
      metafile: true,
      logLevel: 'silent',
      plugins: [flagBuiltins],
    })
  } catch (err) {
    const messages = (err.errors ?? []).map((e) => {
      const where = e.location ? `${e.location.file}:${e.location.line}: ` : ''
      return `  ${where}${e.text}`
    })
    fail(
      `esbuild could not bundle ${relative(root, coreEntry)} for the browser:\n${messages.join('\n') || err}`,
    )
  }

  for (const [file, input] of Object.entries(result.metafile.inputs)) {
    for (const imp of input.imports) {
      if (isNodeBuiltin(imp.path)) offenders.push(`${imp.path} (imported by ${file})`)
    }
  }
  const code = result.outputFiles[0].contents
  const text = new TextDecoder().decode(code)
  for (const m of text.matchAll(/(?:\bfrom|\bimport|\brequire)\s*\(?\s*["'](node:[^"']+)["']/g)) {
    offenders.push(`${m[1]} (in the bundled output)`)
  }
  if (offenders.length > 0) {
    fail(
      `the core browser bundle imports Node builtins:\n${[...new Set(offenders)].map((o) => `  ${o}`).join('\n')}`,
    )
  }

  const min = code.byteLength
  const gz = gzipSync(code, { level: 9 }).byteLength
  console.log(
    `core browser bundle: ${kib(min)} min (${min} B), ${kib(gz)} min+gz (${gz} B) (rxjs external)`,
  )
}

const tmp = mkdtempSync(join(tmpdir(), 'rx-fanout-pack-'))
try {
  checkBuildOutput()
  const tarball = pack(tmp)
  publint(tarball)
  attw(tarball)
  await browserBundle()
  console.log('\ncheck:package OK')
} catch (err) {
  const message = err instanceof CheckError ? err.message : (err?.stack ?? String(err))
  console.error(`\ncheck:package FAILED: ${message}`)
  process.exitCode = 1
} finally {
  rmSync(tmp, { recursive: true, force: true })
}
