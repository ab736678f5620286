// Logs go to the log file and stderr, never stdout: stdout carries only the result or error JSON.
import { appendFileSync, mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import type { LogLevel } from './netconf.ts'

const RANK: Record<LogLevel, number> = { error: 0, info: 1, debug: 2 }

let file = ''
let level: LogLevel = 'info'
let context = ''

export function configureLog(opts: { file?: string; level?: LogLevel; context?: string }): void {
  if (opts.file !== undefined) file = opts.file
  if (opts.level !== undefined) level = opts.level
  if (opts.context !== undefined) context = opts.context
}

function write(lvl: LogLevel, msg: string): void {
  if (RANK[lvl] > RANK[level]) return
  const line = `${new Date().toISOString()} ${lvl.toUpperCase()} [${process.pid}] ${context}${msg}\n`
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
