// `npm run build`: bundles kube-cni.ts into dist/kube-cni, ONE self-contained file with a node shebang.
// That is the file copied to /opt/cni/bin: it needs no node_modules.
//
// Two things in it are for speed, because every pod start pays for every millisecond of plugin start-up.
//
// 1. The commands that are not CNI (lab, routes, conflist, with zx and the API client) are half the code.
//    V8 parses all code in a script before running it, but scans a string literal far more cheaply.
//    So lib/tools/ is bundled separately and embedded as a string (compressed, see compressed()), which runs
//    only when such a command is asked for. An ADD parses about half as much (~5 ms). The tools use the main
//    bundle's lib/plugin/ modules (and so its ip-num) rather than a second copy of their own.
//
// 2. ip-num builds about a dozen constant ranges (IPv4.PRIVATE_RANGES,
// IPv6.LINK_LOCAL_RANGE, ...) when it is loaded, each through its regex validators: that is ~15 ms of every
// plugin start, for constants kube-cni never reads. The build turns each into a getter that builds it on
// first use, so ip-num behaves the same and costs nothing until asked.
//
// 3. V8 compiles the bundle anew in every process. The shipped file is a small loader that compiles the
//    bundle through V8's code cache, kept next to it as `kube-cni.cache` and written by the first ADD (so it
//    holds the functions an ADD runs); see withCodeCache.
import { createHash } from 'node:crypto'
import { chmodSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { brotliCompressSync, constants as zlib } from 'node:zlib'
import { type OnResolveArgs, type Plugin, build } from 'esbuild'

const ROOT = join(__dirname, '..')
export const BUNDLE = join(ROOT, 'dist', 'kube-cni')

// `IPv4.PRIVATE_RANGES = [...];` at the top level of ip-num's IPNumber.js.
const EAGER_CONSTANT = /^(IPv4|IPv6)\.([A-Z_]+) = ([\s\S]*?);$/gm

export function lazyConstants(source: string): { code: string; count: number } {
  let count = 0
  const code = source.replace(EAGER_CONSTANT, (_, cls: string, name: string, expr: string) => {
    count++
    return `Object.defineProperty(${cls}, "${name}", { configurable: true, get() { const value = (${expr}); Object.defineProperty(${cls}, "${name}", { value }); return value } });`
  })
  return { code, count }
}

export const lazyIpNum: Plugin = {
  name: 'lazy-ip-num-constants',
  setup(b) {
    b.onLoad({ filter: /ip-num[\\/]dist[\\/]src[\\/]IPNumber\.js$/ }, (args) => {
      const { code, count } = lazyConstants(readFileSync(args.path, 'utf8'))
      // A new ip-num that changed shape must fail the build, not silently lose the speed-up.
      if (count < 10) throw new Error(`expected ip-num's eager constants in ${args.path}, found ${count}: review deploy/build.ts`)
      return { contents: code, loader: 'js' }
    })
  },
}

const TOOLS_DIR = join(ROOT, 'lib', 'tools')
const PLUGIN_DIR = join(ROOT, 'lib', 'plugin')

/** The file a relative import names, as a path from ROOT (the name both bundles use), when it lies in `dir`. */
function inside(dir: string, args: OnResolveArgs): string | undefined {
  if (!args.path.startsWith('.')) return undefined
  const file = resolve(args.resolveDir, args.path)
  return file.startsWith(dir + sep) ? relative(ROOT, file) : undefined
}

/**
 * The tools bundle: every module in lib/tools/ is an entry, and what they import from lib/tools/ comes along.
 * The plugin modules are NOT bundled again: they stay `require("lib/plugin/...")`, which the main bundle
 * answers with its own copies (see embedTools). Returns the code and the plugin modules it asks for.
 */
async function buildTools(): Promise<{ code: string; plugin: string[] }> {
  const entries = readdirSync(TOOLS_DIR).filter((f) => f.endsWith('.ts')).map((f) => relative(ROOT, join(TOOLS_DIR, f)))
  const plugin = new Set<string>()
  const out = await build({
    ...common,
    stdin: {
      contents: entries.map((t) => `exports[${JSON.stringify(t)}] = require(${JSON.stringify(`./${t}`)});`).join('\n'),
      resolveDir: ROOT,
      loader: 'js',
    },
    plugins: [
      {
        name: 'plugin-from-main-bundle',
        setup(b) {
          b.onResolve({ filter: /^\./ }, (args) => {
            const path = inside(PLUGIN_DIR, args)
            if (path === undefined) return undefined
            plugin.add(path)
            return { path, external: true }
          })
        },
      },
    ],
  })
  return { code: out.outputFiles![0].text, plugin: [...plugin].sort() }
}

/**
 * In the main bundle, each import of a lib/tools/ module is served from the embedded tools bundle, evaluated
 * on first use, and the tools bundle's `require("lib/plugin/...")` gets the main bundle's own module.
 *
 * The main bundle hands those modules over from kube-cni.ts's top level (appended to it here), not by
 * importing them in the loader: esbuild wraps every module a lazily loaded one imports in an init function,
 * and the plugin modules would then start up wrapped on every ADD. The hand-over runs before any tool can:
 * esbuild turns `await import()` into a promise callback, which runs only after the script's top level.
 */
function embedTools(tools: { code: string; plugin: string[] }): Plugin {
  const entry = join(ROOT, 'kube-cni.ts')
  return {
    name: 'embed-tools',
    setup(b) {
      b.onResolve({ filter: /^\./ }, (args) => {
        const path = inside(TOOLS_DIR, args)
        if (path === undefined) return undefined
        if (dirname(path) !== relative(ROOT, TOOLS_DIR)) throw new Error(`${args.importer} imports ${path}: only the modules directly in lib/tools/ are entries of the tools bundle`)
        return { path, namespace: 'tool' }
      })
      b.onResolve({ filter: /^tools-(loader|plugin)$/ }, (args) => ({ path: args.path, namespace: 'tool' }))
      b.onLoad({ filter: /[\\/]kube-cni\.ts$/ }, (args) => {
        if (args.path !== entry) return undefined
        const imports = tools.plugin.map((p, i) => `import * as plugin${i} from ${JSON.stringify(`./${p}`)}`)
        const handOver = `Object.assign(toolsPlugin, { ${tools.plugin.map((p, i) => `${JSON.stringify(p)}: plugin${i}`).join(', ')} })`
        return { loader: 'ts', contents: [readFileSync(entry, 'utf8'), ...imports, "import { plugin as toolsPlugin } from 'tools-plugin'", handOver].join('\n') }
      })
      b.onLoad({ filter: /^tools-plugin$/, namespace: 'tool' }, () => ({ loader: 'js', contents: 'export const plugin = {}' }))
      b.onLoad({ filter: /^tools-loader$/, namespace: 'tool' }, () => ({
        loader: 'js',
        contents: `import { plugin } from 'tools-plugin';
const m = { exports: {} };
const code = require('node:zlib').brotliDecompressSync(Buffer.from(${JSON.stringify(compressed(tools.code))}, 'base64')).toString();
require('node:vm').runInThisContext('(function (module, exports, require) {' + code + '\\n})', { filename: 'kube-cni-tools' })(m, m.exports, (id) => plugin[id] ?? require(id));
export default m.exports;`,
      }))
      b.onLoad({ filter: /.*/, namespace: 'tool' }, (args) => ({
        loader: 'js',
        contents: `module.exports = require('tools-loader').default[${JSON.stringify(args.path)}];`,
      }))
    },
  }
}

/**
 * The tools' code as base64 of brotli: a third of the characters, and none that needs an escape. Every ADD's
 * start-up scans the whole file, string literals included (~1.5 ms for the 147 KB of plain tools code); the
 * ~2 ms of decompressing are paid only by the commands that run the tools.
 */
function compressed(code: string): string {
  return brotliCompressSync(code, { params: { [zlib.BROTLI_PARAM_QUALITY]: zlib.BROTLI_MAX_QUALITY } }).toString('base64')
}

/** A string literal that costs the bundle little: minified code has thousands of `"` and few `'`. */
export function jsString(s: string): string {
  return `'${s.replace(/[\\'\n\r]/g, (c) => ({ '\\': '\\\\', "'": "\\'", '\n': '\\n', '\r': '\\r' })[c]!)}'`
}

/**
 * The shipped file: the bundle as a string, compiled with the cached data of an earlier run when there is one.
 * Cached data is compiled code, so it is used only from a regular file that root (or whoever runs us) owns and
 * no one else can write, and only when its first line names this very bundle: V8 itself checks little more
 * than the source's length. A missing, stale or rejected cache costs one normal compile; the next ADD writes a
 * new one (to a temp file, then renamed), and a directory we cannot write to costs nothing more.
 */
export function withCodeCache(code: string): string {
  const body = `(function (exports, require, module, __filename, __dirname) {${code}\n})`
  const key = `kube-cni code cache ${createHash('sha256').update(body).digest('hex')}\n`
  return `#!/usr/bin/env node
"use strict";{
const body = ${jsString(body)}, key = ${JSON.stringify(key)};
const fs = require("node:fs"), { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
const path = __filename + ".cache";
function readCache() {
  let fd;
  try { fd = fs.openSync(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK) } catch { return undefined }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || (st.uid !== 0 && st.uid !== process.geteuid()) || st.mode & 0o022) return undefined;
    const data = fs.readFileSync(fd);
    return data.toString("latin1", 0, key.length) === key ? data.subarray(key.length) : undefined;
  } catch { return undefined } finally { fs.closeSync(fd) }
}
function writeCache() {
  const tmp = path + "." + process.pid + ".tmp";
  let fd;
  try { fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600) } catch { return }
  try {
    fs.writeSync(fd, key);
    fs.writeSync(fd, script.createCachedData());
    fs.closeSync(fd);
    fs.renameSync(tmp, path);
  } catch { try { fs.closeSync(fd) } catch {} try { fs.unlinkSync(tmp) } catch {} }
}
const cachedData = readCache();
const script = new (require("node:vm").Script)(body, { filename: __filename, cachedData });
if (process.env.CNI_COMMAND === "ADD" && (cachedData === undefined || script.cachedDataRejected)) process.once("exit", writeCache);
script.runInThisContext()(exports, require, module, __filename, __dirname);
}
`
}

const common = {
  bundle: true,
  platform: 'node' as const,
  target: 'node18',
  format: 'cjs' as const,
  minify: true,
  legalComments: 'none' as const,
  logLevel: 'warning' as const,
  write: false,
}

async function main(): Promise<void> {
  const tools = await buildTools()
  const out = await build({
    ...common,
    entryPoints: [join(ROOT, 'kube-cni.ts')],
    outfile: BUNDLE,
    plugins: [lazyIpNum, embedTools(tools)],
  })
  // kube-cni.ts's own shebang runs it under tsx; the loader runs it under plain node.
  const code = withCodeCache(out.outputFiles![0].text.replace(/^#!.*\n/, ''))
  mkdirSync(join(ROOT, 'dist'), { recursive: true })
  writeFileSync(BUNDLE, code)
  chmodSync(BUNDLE, 0o755)
}

if (require.main === module) main().catch((e) => {
  console.error(e)
  process.exit(1)
})
