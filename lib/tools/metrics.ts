// The routes agent's /healthz, /readyz and /metrics. The metrics are a handful of counters and gauges in the
// Prometheus text format (version 0.0.4), written here in a few lines rather than with prom-client: the
// agent needs no histograms, summaries or default process metrics, and the bundle stays small (README).
import { createServer } from 'node:http'

type Labels = Record<string, string>

const escapeLabel = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
const labelText = (l: Labels) => {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${escapeLabel(v)}"`)
  return parts.length ? `{${parts.join(',')}}` : ''
}

export class Metric {
  private readonly values = new Map<string, number>()

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge',
  ) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels)
    this.values.set(key, (this.values.get(key) ?? 0) + by)
  }

  set(value: number, labels: Labels = {}): void {
    this.values.set(labelText(labels), value)
  }

  /** Gauges whose label sets come and go (skip reasons, pools) are set whole. */
  replace(entries: [Labels, number][]): void {
    this.values.clear()
    for (const [labels, value] of entries) this.set(value, labels)
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} ${this.type}`]
    for (const [labels, value] of this.values) lines.push(`${this.name}${labels} ${value}`)
    return lines.join('\n')
  }
}

export class Registry {
  private readonly metrics: Metric[] = []
  private readonly collectors: (() => Promise<void>)[] = []

  /** A counter without labels starts at 0, so a rate() over it works from the first scrape. */
  counter(name: string, help: string): Metric {
    const m = this.add(new Metric(name, help, 'counter'))
    m.set(0)
    return m
  }

  gauge(name: string, help: string): Metric {
    return this.add(new Metric(name, help, 'gauge'))
  }

  /** Runs before each scrape, for values read from outside (the kernel, the IPAM store). */
  collect(fn: () => Promise<void>): void {
    this.collectors.push(fn)
  }

  async render(): Promise<string> {
    for (const fn of this.collectors) await fn()
    return `${this.metrics.map((m) => m.render()).join('\n')}\n`
  }

  private add(m: Metric): Metric {
    this.metrics.push(m)
    return m
  }
}

/** HOST:PORT, with an IPv6 host in brackets ([::1]:9101). */
export function parseListenAddress(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text)
  const port = Number(m?.[3])
  if (!m || !(port > 0 && port < 65536)) throw new Error(`--metrics-addr takes HOST:PORT (127.0.0.1:9101, [::1]:9101), not ${JSON.stringify(text)}`)
  return { host: m[1] ?? m[2], port }
}

export interface Health {
  live: () => string | undefined // undefined when alive, else why not
  ready: () => string | undefined
}

export async function serveMetrics(addr: string, registry: Registry, health: Health): Promise<void> {
  const { host, port } = parseListenAddress(addr)
  const answer = (why: string | undefined, bad: number) => (why === undefined ? { code: 200, body: 'ok\n' } : { code: bad, body: `${why}\n` })
  const server = createServer(async (req, res) => {
    const path = (req.url ?? '').split('?')[0]
    let out: { code: number; body: string; type?: string }
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') out = { code: 405, body: 'GET only\n' }
      else if (path === '/healthz') out = answer(health.live(), 500)
      else if (path === '/readyz') out = answer(health.ready(), 503)
      else if (path === '/metrics') out = { code: 200, body: await registry.render(), type: 'text/plain; version=0.0.4; charset=utf-8' }
      else out = { code: 404, body: 'not found: /healthz, /readyz, /metrics\n' }
    } catch (e) {
      out = { code: 500, body: `${(e as Error).message}\n` }
    }
    res.writeHead(out.code, { 'content-type': out.type ?? 'text/plain; charset=utf-8' }).end(req.method === 'HEAD' ? undefined : out.body)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`--metrics-addr ${addr}: cannot listen: ${e.message}`)))
    server.listen(port, host, resolve)
  })
}
