// A minimal CRI client: the kubelet's RuntimeService calls over gRPC on a unix socket, from cri.proto (only the
// calls and fields the tests use). Field names are the proto's (snake_case), enums are their names as strings,
// int64 are numbers. A failed call rejects with the runtime's own message, as the kubelet would log it.
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { join } from 'node:path'

export type NamespaceMode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET'

export interface PortMapping {
  protocol?: 'TCP' | 'UDP' | 'SCTP'
  container_port: number
  host_port: number
  host_ip?: string
}

export interface PodSandboxConfig {
  metadata: { name: string; uid: string; namespace: string; attempt?: number }
  hostname?: string
  log_directory?: string
  port_mappings?: PortMapping[]
  labels?: Record<string, string>
  linux?: {
    cgroup_parent?: string
    security_context?: { namespace_options?: { network?: NamespaceMode; pid?: NamespaceMode; ipc?: NamespaceMode }; privileged?: boolean }
  }
}

export interface Mount {
  container_path: string
  host_path: string
  readonly?: boolean
}

export interface ContainerConfig {
  metadata: { name: string; attempt?: number }
  image: { image: string }
  command?: string[]
  args?: string[]
  working_dir?: string
  envs?: { key: string; value: string }[]
  mounts?: Mount[]
  labels?: Record<string, string>
  log_path?: string
  linux?: {
    security_context?: {
      capabilities?: { add_capabilities?: string[]; drop_capabilities?: string[] }
      privileged?: boolean
      namespace_options?: { network?: NamespaceMode; pid?: NamespaceMode; ipc?: NamespaceMode }
    }
  }
}

export interface SandboxStatus {
  id: string
  metadata: PodSandboxConfig['metadata']
  state: 'SANDBOX_READY' | 'SANDBOX_NOTREADY'
  network: { ip: string; additional_ips: { ip: string }[] } | null
}

export interface ContainerStatus {
  id: string
  metadata: { name: string; attempt: number }
  state: 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN'
  exit_code: number
  reason: string
  message: string
  log_path: string
}

const PROTO = join(__dirname, 'cri.proto')

/** The CRI error as a plain Error: "RunPodSandbox: <runtime's message>", with the gRPC status code. */
export class CriError extends Error {
  constructor(readonly call: string, readonly code: grpc.status, readonly details: string) {
    super(`${call}: ${details}`)
  }
}

export class Cri {
  private readonly client: grpc.Client & Record<string, Function>

  constructor(readonly socket: string) {
    const def = protoLoader.loadSync(PROTO, { keepCase: true, longs: Number, enums: String, defaults: true })
    const pkg = grpc.loadPackageDefinition(def) as any
    this.client = new pkg.runtime.v1.RuntimeService(`unix://${socket}`, grpc.credentials.createInsecure())
  }

  private call<T>(method: string, req: object, timeoutMs = 120_000): Promise<T> {
    return new Promise((resolve, reject) => {
      this.client[method](req, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: T) =>
        err ? reject(new CriError(method, err.code, err.details)) : resolve(res))
    })
  }

  version() {
    return this.call<{ runtime_name: string; runtime_version: string; runtime_api_version: string }>('Version', { version: 'v1' })
  }

  /** The runtime's conditions by type: RuntimeReady, NetworkReady. */
  async status(): Promise<Record<string, { status: boolean; reason: string; message: string }>> {
    const r = await this.call<{ status: { conditions: { type: string; status: boolean; reason: string; message: string }[] } }>('Status', {})
    return Object.fromEntries(r.status.conditions.map(({ type, ...c }) => [type, c]))
  }

  async runPodSandbox(config: PodSandboxConfig): Promise<string> {
    return (await this.call<{ pod_sandbox_id: string }>('RunPodSandbox', { config })).pod_sandbox_id
  }

  async stopPodSandbox(id: string): Promise<void> {
    await this.call('StopPodSandbox', { pod_sandbox_id: id })
  }

  async removePodSandbox(id: string): Promise<void> {
    await this.call('RemovePodSandbox', { pod_sandbox_id: id })
  }

  /** The status, and (verbose) the runtime's info: for containerd, the sandbox's pid and its OCI spec. */
  async podSandboxStatus(id: string): Promise<{ status: SandboxStatus; info: any }> {
    const r = await this.call<{ status: SandboxStatus; info: Record<string, string> }>('PodSandboxStatus', { pod_sandbox_id: id, verbose: true })
    return { status: r.status, info: r.info.info ? JSON.parse(r.info.info) : {} }
  }

  async listPodSandbox(labels: Record<string, string> = {}): Promise<{ id: string; metadata: SandboxStatus['metadata']; state: SandboxStatus['state'] }[]> {
    return (await this.call<{ items: any[] }>('ListPodSandbox', { filter: { label_selector: labels } })).items
  }

  async createContainer(sandboxId: string, config: ContainerConfig, sandboxConfig: PodSandboxConfig): Promise<string> {
    const r = await this.call<{ container_id: string }>('CreateContainer', { pod_sandbox_id: sandboxId, config, sandbox_config: sandboxConfig })
    return r.container_id
  }

  async startContainer(id: string): Promise<void> {
    await this.call('StartContainer', { container_id: id })
  }

  async stopContainer(id: string, timeoutSeconds = 0): Promise<void> {
    await this.call('StopContainer', { container_id: id, timeout: timeoutSeconds })
  }

  async removeContainer(id: string): Promise<void> {
    await this.call('RemoveContainer', { container_id: id })
  }

  async containerStatus(id: string): Promise<ContainerStatus> {
    return (await this.call<{ status: ContainerStatus }>('ContainerStatus', { container_id: id })).status
  }

  /** Runs `cmd` in a running container; resolves with its output and exit code (non-zero does not reject). */
  async execSync(id: string, cmd: string[], timeoutSeconds = 30): Promise<{ stdout: string; stderr: string; exit_code: number }> {
    const r = await this.call<{ stdout: Buffer; stderr: Buffer; exit_code: number }>('ExecSync', { container_id: id, cmd, timeout: timeoutSeconds }, (timeoutSeconds + 10) * 1000)
    return { stdout: r.stdout.toString(), stderr: r.stderr.toString(), exit_code: r.exit_code }
  }

  close(): void {
    this.client.close()
  }
}
