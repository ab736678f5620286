// Logs go to the log file and stderr, never stdout: stdout carries only the result or error JSON.
import { appendFileSync, mkdirSync } from 'node:fs'
import { dirname } from 'node:path'

export type LogLevel = 'error' | 'info' | 'debug'
// In rising verbosity: a level logs what its rank and those before it say.
export const LOG_LEVELS: LogLevel[] = ['error', 'info', 'debug']

let file = ''
let level: LogLevel = 'info'

export function configureLog(opts: { file?: string; level?: LogLevel }): void {
  if (opts.file !== undefined) file = opts.file
  if (opts.level !== undefined) level = opts.level
}

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/**
 * Names, CNI_ARGS and messages come from outside: a newline in a pod name must not start a log line of its
 * own, nor an escape sequence repaint the terminal of whoever reads the log. C0, DEL, C1 and the Unicode
 * line and paragraph separators become visible escapes.
 */
export function escapeControl(text: string): string {
  return text.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029]/g, (c) => {
    const code = c.charCodeAt(0)
    return NAMED[c] ?? (code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16)}`)
  })
}

function write(lvl: LogLevel, msg: string): void {
  if (LOG_LEVELS.indexOf(lvl) > LOG_LEVELS.indexOf(level)) return
  const line = `${new Date().toISOString()} ${lvl.toUpperCase()} [${process.pid}] ${escapeControl(msg)}\n`
  process.stderr.write(line)
  if (!file) return
  try {
    // One write with O_APPEND: lines from concurrent invocations never interleave.
    appendFileSync(file, line)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return
    try {
      mkdirSync(dirname(file), { recursive: true })
      appendFileSync(file, line)
    } catch {
      // A log file we cannot write must never fail the pod's network setup; stderr still has the line.
    }
  }
}

export const log = {
  error: (msg: string) => write('error', msg),
  info: (msg: string) => write('info', msg),
  debug: (msg: string) => write('debug', msg),
}
