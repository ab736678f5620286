// One process taking one address from a shared store, for the concurrency test in test/unit/ipam.test.ts.
import { Store } from '../../lib/plugin/ipam.ts'
import { parseNetConf } from '../../lib/plugin/netconf.ts'

const [dataDir, containerId] = process.argv.slice(2)
const conf = parseNetConf(JSON.stringify({ cniVersion: '1.0.0', name: 'net', network: '10.200.0.0/16', subnet: '10.200.1.0/24', dataDir }))
const attachment = new Store(conf.dataDir, conf.name).open({ containerId, ifname: 'eth0' })
process.stdout.write(String(attachment.reserve(conf.pools[0])))
attachment.close()
