// The plugin/tools boundary: what an ADD loads (kube-cni.ts and lib/plugin/) never imports lib/tools/, zx or
// node:crypto. Each of them would be parsed and run on every pod start: zx alone costs more than kube-cni's
// own code, and deploy/build.ts keeps the tools out of the main bundle only for imports into lib/tools/.
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join, relative, resolve, sep } from 'node:path'
import ts from 'typescript'
import { test } from 'uvu'
import * as assert from 'uvu/assert'

const ROOT = join(__dirname, '..', '..')
const PLUGIN_DIR = join(ROOT, 'lib', 'plugin')
const TOOLS_DIR = join(ROOT, 'lib', 'tools')

type Import = { specifier: string; lazy: boolean }

/** Every module a file names: import/export ... from, import x = require(), and (lazy) import() and require(). */
function importsOf(file: string, source: string): Import[] {
  const found: Import[] = []
  const visit = (node: ts.Node, inFunction: boolean): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      found.push({ specifier: node.moduleSpecifier.text, lazy: false })
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference) && ts.isStringLiteral(node.moduleReference.expression)) {
      found.push({ specifier: node.moduleReference.expression.text, lazy: false })
    } else if (ts.isCallExpression(node) && node.arguments.length > 0 && ts.isStringLiteralLike(node.arguments[0])) {
      const dynamic = node.expression.kind === ts.SyntaxKind.ImportKeyword
      if (dynamic || (ts.isIdentifier(node.expression) && node.expression.text === 'require')) {
        // A require() at the top level runs on every start just like an import.
        found.push({ specifier: node.arguments[0].text, lazy: dynamic || inFunction })
      }
    }
    ts.forEachChild(node, (child) => visit(child, inFunction || ts.isFunctionLike(node)))
  }
  visit(ts.createSourceFile(file, source, ts.ScriptTarget.ES2022, true), false)
  return found
}

/** Why `file` may not import `specifier`, or undefined when it may. */
function forbidden(file: string, { specifier, lazy }: Import, lazyToolsAllowed: boolean): string | undefined {
  if (specifier === 'zx' || specifier.startsWith('zx/')) return 'zx'
  // recordName in lib/plugin/ipam.ts loads it only for container IDs too long for a file name.
  if (!lazy && (specifier === 'node:crypto' || specifier === 'crypto')) return 'node:crypto'
  if (specifier.startsWith('.') && resolve(dirname(file), specifier).startsWith(TOOLS_DIR + sep)) {
    return lazy && lazyToolsAllowed ? undefined : 'a module of lib/tools/'
  }
  return undefined
}

function violations(file: string, source: string, lazyToolsAllowed: boolean): string[] {
  return importsOf(file, source).flatMap((i) => {
    const why = forbidden(file, i, lazyToolsAllowed)
    return why ? [`${relative(ROOT, file)} imports ${i.specifier}${i.lazy ? ' (lazily)' : ''}: ${why}`] : []
  })
}

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? tsFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  )
}

test('no file in lib/plugin/ imports lib/tools/, zx or node:crypto', () => {
  const files = tsFiles(PLUGIN_DIR)
  assert.ok(files.length >= 5, `only ${files.length} files in lib/plugin/`)
  assert.equal(files.flatMap((f) => violations(f, readFileSync(f, 'utf8'), false)), [])
})

test("kube-cni.ts's static imports leave out lib/tools/, zx and node:crypto; its commands load tools lazily", () => {
  const file = join(ROOT, 'kube-cni.ts')
  const source = readFileSync(file, 'utf8')
  assert.equal(violations(file, source, true), [])
  assert.ok(importsOf(file, source).some((i) => i.lazy && i.specifier.startsWith('./lib/tools/')), 'kube-cni.ts imports no tool at all')
})

test('the check sees each kind of import', () => {
  const file = join(PLUGIN_DIR, 'example.ts')
  const cases: [string, string[]][] = [
    [`import { $ } from 'zx/core'`, ['lib/plugin/example.ts imports zx/core: zx']],
    [`export { readNode } from '../tools/kube.ts'`, ['lib/plugin/example.ts imports ../tools/kube.ts: a module of lib/tools/']],
    [`import type { NodeList } from '../tools/kube.ts'`, ['lib/plugin/example.ts imports ../tools/kube.ts: a module of lib/tools/']],
    [`async function f() { await import('../tools/lab.ts') }`, ['lib/plugin/example.ts imports ../tools/lab.ts (lazily): a module of lib/tools/']],
    [`import { createHash } from 'node:crypto'`, ['lib/plugin/example.ts imports node:crypto: node:crypto']],
    [`const { createHash } = require('crypto')`, ['lib/plugin/example.ts imports crypto: node:crypto']],
    [`function f() { return require('node:crypto') }`, []],
    [`import { run } from './exec.ts'\nimport { IPv4 } from 'ip-num'`, []],
  ]
  for (const [source, expected] of cases) assert.equal(violations(file, source, false), expected, source)
})

test.run()
