#!/usr/bin/env node
// The floor: the least a Node.js CNI plugin can cost. It does the same kernel work as a kube-cni ADD
// (veth into the pod, attach to the bridge, address, route, MACs read back) in the same 2 `ip -batch` execs,
// with no config parsing, no IPAM and no validation: the address comes from FLOOR_IP. DEL is node start-up
// plus the same `ip link del`. Used only by bench/bench.ts.
const { spawn } = require('node:child_process')
const { CNI_COMMAND: cmd, CNI_NETNS: netns, CNI_IFNAME: ifname, FLOOR_IP: ip, FLOOR_VETH: veth, FLOOR_BRIDGE: bridge } = process.env

function batch(prefix, lines) {
  return new Promise((resolve, reject) => {
    const child = spawn(prefix[0], [...prefix.slice(1), '-j', '-batch', '-'])
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.on('close', (code) => (code === 0 ? resolve(out.split('\n').filter((l) => l.startsWith('[')).map((l) => JSON.parse(l))) : reject(new Error(`exit ${code}`))))
    child.stdin.end(lines.join('\n') + '\n')
  })
}

async function main() {
  if (cmd === 'DEL') return batch(['ip'], [`link del ${veth}`])
  const host = await batch(['ip'], [
    `link add ${veth} type veth peer name ${ifname} netns ${netns}`,
    `link set ${veth} master ${bridge} up`,
    `link show dev ${bridge}`,
    `link show dev ${veth}`,
  ])
  const pod = await batch(['nsenter', `--net=${netns}`, 'ip'], [
    `addr add ${ip}/24 dev ${ifname}`,
    `link set ${ifname} up`,
    `route add default via 10.203.1.1 dev ${ifname}`,
    `link show dev ${ifname}`,
  ])
  process.stdout.write(JSON.stringify({ cniVersion: '1.0.0', interfaces: [{ mac: host[0][0].address }, { mac: host[1][0].address }, { mac: pod[0][0].address }], ips: [{ address: `${ip}/24` }] }))
}
main().catch((e) => {
  process.stdout.write(JSON.stringify({ code: 100, msg: e.message }))
  process.exitCode = 1
})
