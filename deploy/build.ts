// `npm run build`: bundles kube-cni.ts into dist/kube-cni, ONE self-contained file with a node shebang.
// That is the file copied to /opt/cni/bin: it needs no node_modules.
//
// Two things in it are for speed, because every pod start pays for every millisecond of plugin start-up.
//
// 1. The commands that are not CNI (lab, routes, conflist, with zx and the API client) are half the code.
//    V8 parses all code in a script before running it, but skips through a string literal almost for free.
//    So the tools are bundled separately and embedded as a string, which runs only when such a command is
//    asked for. An ADD parses about half as much (~5 ms).
//
// 2. ip-num builds about a dozen constant ranges (IPv4.PRIVATE_RANGES,
// IPv6.LINK_LOCAL_RANGE, ...) when it is loaded, each through its regex validators: that is ~15 ms of every
// plugin start, for constants kube-cni never reads. The build turns each into a getter that builds it on
// first use, so ip-num behaves the same and costs nothing until asked.
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { type Plugin, build } from 'esbuild'

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

// The modules kube-cni.ts imports only for its non-CNI commands, by the name they are imported with.
const TOOLS = ['./lib/tools/lab.ts', './lib/tools/routes.ts', './lib/tools/conflist.ts', './lib/tools/doctor.ts']

/** In the main bundle, each tool module is served from the embedded tools bundle, evaluated on first use. */
function embedTools(toolsCode: string): Plugin {
  return {
    name: 'embed-tools',
    setup(b) {
      b.onResolve({ filter: /^\.\/lib\/tools\/(lab|routes|conflist|doctor)\.ts$/ }, (args) => ({ path: args.path, namespace: 'tool' }))
      b.onResolve({ filter: /^tools-loader$/ }, () => ({ path: 'tools-loader', namespace: 'tool' }))
      b.onLoad({ filter: /^tools-loader$/, namespace: 'tool' }, () => ({
        loader: 'js',
        contents: `const m = { exports: {} };
require('node:vm').runInThisContext('(function (module, exports, require) {' + ${JSON.stringify(toolsCode)} + '\\n})', { filename: 'kube-cni-tools' })(m, m.exports, require);
module.exports = m.exports;`,
      }))
      b.onLoad({ filter: /.*/, namespace: 'tool' }, (args) => ({
        loader: 'js',
        contents: `module.exports = require('tools-loader')[${JSON.stringify(args.path)}];`,
      }))
    },
  }
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
  const tools = await build({
    ...common,
    stdin: {
      contents: TOOLS.map((t) => `exports[${JSON.stringify(t)}] = require(${JSON.stringify(t)});`).join('\n'),
      resolveDir: ROOT,
      loader: 'js',
    },
    outfile: join(ROOT, 'dist', 'tools.js'),
    plugins: [lazyIpNum],
  })
  const out = await build({
    ...common,
    entryPoints: [join(ROOT, 'kube-cni.ts')],
    outfile: BUNDLE,
    plugins: [lazyIpNum, embedTools(tools.outputFiles![0].text)],
  })
  // kube-cni.ts's own shebang runs it under tsx; the bundle runs under plain node.
  const code = out.outputFiles![0].text.replace(/^#!.*\n/, '#!/usr/bin/env node\n')
  mkdirSync(join(ROOT, 'dist'), { recursive: true })
  writeFileSync(BUNDLE, code)
  chmodSync(BUNDLE, 0o755)
}

if (require.main === module) main().catch((e) => {
  console.error(e)
  process.exit(1)
})
