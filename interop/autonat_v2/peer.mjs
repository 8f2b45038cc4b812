#!/usr/bin/env node
// A js-libp2p 3 peer that speaks AutoNAT v2 with @libp2p/autonat-v2's own generated protobuf
// codec, to check prozchain_discovery's AutoNAT v2 (nat/autonat.py) against another
// implementation's bytes (tests/test_autonat_js.py).
//
// Why not the stock autoNATv2() service: it refuses private and documentation addresses
// (@libp2p/utils isPrivateIp counts 192.0.2/24, 198.51.100/24 and 203.0.113/24 as private), so
// neither loopback nor the NAT lab could be served or asked. The exchanges below follow
// @libp2p/autonat-v2 2.0.15 dist/src/server.js and client.js step by step, minus that check.
//
//   node peer.mjs client --server MA [--third MA]   ask MA to dial us back (and a third party)
//   node peer.mjs server                             serve dial-requests, dial back (force: new)
//
// Prints one JSON object per line on stdout.

import { parseArgs } from 'node:util'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { pbStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { DialBack, DialBackResponse, DialResponse, DialStatus, Message } from './node_modules/@libp2p/autonat-v2/dist/src/pb/index.js'

// js-libp2p 3 calls Promise.withResolvers (Node >= 22); Debian's Node 20 lacks it.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const DIAL_REQUEST = '/libp2p/autonat/2/dial-request'
const DIAL_BACK = '/libp2p/autonat/2/dial-back'

const emit = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, ...fields }, (_k, v) => typeof v === 'bigint' ? v.toString() : v) + '\n')

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { server: { type: 'string' }, third: { type: 'string' }, listen: { type: 'string', default: '/ip4/127.0.0.1/tcp/0' } }
})
const mode = positionals[0]

const node = await createLibp2p({
  addresses: { listen: [values.listen] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify() }
})
emit('listening', { peer: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })

if (mode === 'client') {
  const nonces = new Map()
  await node.handle(DIAL_BACK, async (stream, connection) => {
    const messages = pbStream(stream, { maxDataLength: 8192 })
    const message = await messages.read(DialBack)
    const known = nonces.has(message.nonce)
    nonces.set(message.nonce, { peer: connection.remotePeer.toString(), conn: connection.id })
    emit('dial_back', { nonce: message.nonce, known, from: connection.remotePeer.toString(), conn: connection.id })
    await messages.write({ status: DialBackResponse.DialBackStatus.OK }, DialBackResponse)
    await stream.close()
  })
  const server = multiaddr(values.server)
  const conn = await node.dial(server)
  const ask = async (addr) => {
    const nonce = BigInt(Math.floor(Math.random() * Number.MAX_SAFE_INTEGER))
    nonces.set(nonce, null)
    const stream = await conn.newStream(DIAL_REQUEST)
    const messages = pbStream(stream).pb(Message)
    await messages.write({ dialRequest: { addrs: [addr.bytes], nonce } })
    let response = await messages.read()
    let paid = 0n
    if (response.dialDataRequest != null) {
      const buf = new Uint8Array(4096)
      for (let i = 0n; i < response.dialDataRequest.numBytes; i += 4096n) {
        await messages.write({ dialDataResponse: { data: buf } })
        paid += 4096n
      }
      response = await messages.read()
    }
    await new Promise(resolve => setTimeout(resolve, 200)) // the dial-back stream may trail
    const back = nonces.get(nonce)
    emit('result', {
      addr: addr.toString(),
      status: response.dialResponse?.status,
      dialStatus: response.dialResponse?.dialStatus,
      addrIdx: response.dialResponse?.addrIdx,
      paid,
      nonceBack: back != null,
      newConnection: back != null && back.conn !== conn.id,
      backFrom: back?.peer,
      server: conn.remotePeer.toString()
    })
  }
  const own = node.getMultiaddrs()[0].decapsulateCode(421) // without /p2p
  await ask(own)
  if (values.third != null) await ask(multiaddr(values.third))
  await node.stop()
  process.exit(0)
} else if (mode === 'server') {
  await node.handle(DIAL_REQUEST, async (stream, connection) => {
    const messages = pbStream(stream, { maxDataLength: 8192 }).pb(Message)
    const { dialRequest } = await messages.read()
    const ma = multiaddr(dialRequest.addrs[0])
    const ip = ma.toOptions().host
    if (ip !== connection.remoteAddr.toOptions().host) {
      const numBytes = 30000 + Math.floor(Math.random() * 70000)
      await messages.write({ dialDataRequest: { addrIdx: 0, numBytes: BigInt(numBytes) } })
      let received = 0
      while (received < numBytes) {
        const { dialDataResponse } = await messages.read()
        received += dialDataResponse.data.byteLength
      }
      emit('paid', { received })
    }
    let dialStatus = DialStatus.OK
    try {
      const back = await node.dial(ma, { force: true })
      try {
        const s = await back.newStream(DIAL_BACK)
        const dbm = pbStream(s, { maxDataLength: 8192 })
        await dbm.write({ nonce: dialRequest.nonce }, DialBack)
        await dbm.read(DialBackResponse)
        emit('dialed_back', { addr: ma.toString(), conn: back.id, requestConn: connection.id })
        await back.close()
      } catch (err) {
        dialStatus = DialStatus.E_DIAL_BACK_ERROR
        back.abort(err)
      }
    } catch (err) {
      dialStatus = DialStatus.E_DIAL_ERROR
    }
    await messages.write({ dialResponse: { addrIdx: 0, status: DialResponse.ResponseStatus.OK, dialStatus } })
    await stream.close()
  })
  process.stdin.on('end', async () => { await node.stop(); process.exit(0) })
  process.stdin.resume()
} else {
  process.stderr.write('usage: node peer.mjs client --server MA [--third MA] | server\n')
  process.exit(2)
}
