#!/usr/bin/env node
// A ProzChain discovery peer on js-libp2p (issue #11): a second, independent implementation of
// /prozchain/bootstrap/1.0 and /prozchain/pex/1.0 (protocols/*.md) meeting the Python node on
// the wire. TCP + Noise + Yamux, identify, ping, circuit relay v2 (client, and server with
// --relay-server), DCUtR, mDNS (--mdns), AutoNAT (v1: the pinned @libp2p/autonat 2.x).
//
// Usage:
//   node interop/js/node.mjs --listen /ip4/127.0.0.1/tcp/0 --bootstrap /ip4/…/p2p/… \
//        --network-id prozchain-interop [--min-peers 8] [--min-peer-age 60] [--exchange-interval 60]
//        [--bootstrap-node] [--max-answer N] [--mdns] [--relay-server] [--relay MA]…
//        [--forge-records] [--passive] [--status-interval 1]
//
// Prints one JSON object per line on stdout (event: listening, dial, connected, disconnected,
// identify, records, wrong_network, served, joined, pex, peers, summary, error). Reads commands as
// JSON lines on stdin: {"cmd":"dial","addr":MA}, {"cmd":"pex","peer":ID},
// {"cmd":"bootstrap","peer":ID} ("dial" takes "fresh": true to hang up on the peer first), {"cmd":"ping","peer":ID}, {"cmd":"status"}, {"cmd":"stop"}.
//
// What it checks on what it receives is what the Python node checks (records.py): envelope size,
// payload type, signature over the libp2p-peer-record domain, signer = record peer id, <= 64
// addresses that parse and are not unspecified, not our own id; frames over 64 KiB are refused
// before allocation; network ids are compared; PEX answers are rate limited.

import { parseArgs } from 'node:util'
import { performance } from 'node:perf_hooks'
import { createInterface } from 'node:readline'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { dcutr } from '@libp2p/dcutr'
import { mdns } from '@libp2p/mdns'
import { autoNAT } from '@libp2p/autonat'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey, peerIdFromString } from '@libp2p/peer-id'
import { PeerRecord, RecordEnvelope } from '@libp2p/peer-record'
import { multiaddr } from '@multiformats/multiaddr'
import { lpStream } from 'it-length-prefixed-stream'
import * as codec from './codec.mjs'

const T0 = performance.now()
const now = () => performance.now()
const elapsedMs = () => Math.round((now() - T0) * 10) / 10

function emit (event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: elapsedMs(), ...fields }) + '\n')
}

// ---- options --------------------------------------------------------------------------------

function numberOpt (values, name, { min = 0 } = {}) {
  const v = Number(values[name])
  if (!Number.isFinite(v) || v < min) {
    process.stderr.write(`error: --${name}: ${values[name]} is not a number >= ${min}\n`)
    process.exit(2)
  }
  return v
}

const { values: args } = parseArgs({
  options: {
    listen: { type: 'string', multiple: true, default: ['/ip4/127.0.0.1/tcp/0'] },
    bootstrap: { type: 'string', multiple: true, default: [] },
    'network-id': { type: 'string', default: 'prozchain-mainnet' },
    'min-peers': { type: 'string', default: '8' },
    'bootstrap-node': { type: 'boolean', default: false },
    'max-answer': { type: 'string' },
    'max-peers-per-exchange': { type: 'string', default: '50' },
    'min-peer-age': { type: 'string', default: '60' },
    'exchange-interval': { type: 'string', default: '60' },
    'first-request-delay': { type: 'string', default: '0.5' },
    'request-timeout': { type: 'string', default: '10' },
    'status-interval': { type: 'string', default: '1' },
    mdns: { type: 'boolean', default: false },
    'mdns-interval': { type: 'string', default: '1' },
    'relay-server': { type: 'boolean', default: false },
    relay: { type: 'string', multiple: true, default: [] },
    autonat: { type: 'boolean', default: true },
    'no-autonat': { type: 'boolean', default: false },
    'forge-records': { type: 'boolean', default: false },
    passive: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  },
  strict: true
})

if (args.help) {
  process.stdout.write('see the header of interop/js/node.mjs for the options\n')
  process.exit(0)
}

const NETWORK_ID = args['network-id']
if (!/^[!-~]{1,64}$/.test(NETWORK_ID)) {
  process.stderr.write(`error: --network-id: ${JSON.stringify(NETWORK_ID)} is not 1-64 printable ASCII characters\n`)
  process.exit(2)
}
const MIN_PEERS = numberOpt(args, 'min-peers', { min: 1 })
const BOOTSTRAP_NODE = args['bootstrap-node']
const MAX_ANSWER = args['max-answer'] !== undefined ? numberOpt(args, 'max-answer') : (BOOTSTRAP_NODE ? 200 : 50)
const MAX_PER_EXCHANGE = numberOpt(args, 'max-peers-per-exchange', { min: 1 })
const MIN_PEER_AGE_MS = numberOpt(args, 'min-peer-age') * 1000
const EXCHANGE_INTERVAL_MS = numberOpt(args, 'exchange-interval') * 1000
const FIRST_REQUEST_DELAY_MS = numberOpt(args, 'first-request-delay') * 1000
const REQUEST_TIMEOUT_MS = numberOpt(args, 'request-timeout', { min: 0.001 }) * 1000
const STATUS_INTERVAL_MS = numberOpt(args, 'status-interval') * 1000
const FORGE = args['forge-records']
const PASSIVE = args.passive // a measuring probe: no PEX or dials of its own, only on command
const IGNORED_LIMIT = 3 // RATE_LIMITED answers ignored before the requester is dropped
const RECORD_TTL_MS = 3600 * 1000
const MAX_ADDRS_PER_RECORD = 64
const MAX_BOOK = 4096
const PEER_RECORD_PAYLOAD_TYPE = Uint8Array.from([0x03, 0x01])

// ---- state ----------------------------------------------------------------------------------

/** Peers we hold a verified record of: id -> {envelope, seq, addrs, source, from, firstSeen, tried}. */
const book = new Map()
const wrongNetwork = new Set() // peers on another network id: never dialed or asked again
const pexDue = new Map() // outbound peer -> time its next PEX request is due (ms)
const served = new Map() // requester -> {last, ignored}: the PEX rate limit
const bootstrapTargets = new Set() // peer ids given with --bootstrap
const asked = new Set() // bootstrap targets already asked
const dialing = new Set()
const dialFailures = new Map() // peer -> {count, retryAt}
const counters = {
  received: 0,
  accepted: 0,
  rejected: {}, // reason -> n
  acceptedVia: { bootstrap: 0, pex: 0, identify: 0 },
  learnedFrom: { bootstrap: {}, pex: {} }, // via -> sender peer id -> peers first learned from its answers
  pexRequests: 0,
  pexFailures: 0,
  bootstrapRequests: 0,
  servedBootstrap: {},
  servedPex: {},
  wrongNetwork: 0,
  framesRefused: 0
}
let joinedAt = null
let stopping = false

function countRejected (reason, n = 1) {
  counters.rejected[reason] = (counters.rejected[reason] ?? 0) + n
}

// ---- addresses ------------------------------------------------------------------------------

function ipScope (ma) {
  // 'unspecified' | 'loopback' | 'private' | 'public' | 'other' for the first ip component
  let opts
  try { opts = ma.toOptions() } catch { return 'other' }
  const host = opts.host
  if (opts.family === 4) {
    if (host === '0.0.0.0') return 'unspecified'
    const [a, b] = host.split('.').map(Number)
    if (a === 127) return 'loopback'
    if (a === 10 || (a === 172 && b >= 16 && b < 32) || (a === 192 && b === 168) || (a === 169 && b === 254) ||
        (a === 100 && b >= 64 && b < 128)) return 'private'
    return 'public'
  }
  if (opts.family === 6) {
    const h = host.toLowerCase()
    if (h === '::') return 'unspecified'
    if (h === '::1') return 'loopback'
    if (h.startsWith('fe80') || h.startsWith('fc') || h.startsWith('fd')) return 'private'
    return 'public'
  }
  return 'other'
}

function isCircuit (ma) {
  return ma.protoNames().includes('p2p-circuit')
}

function stripP2p (ma) {
  const s = ma.toString()
  if (isCircuit(ma)) return ma
  const i = s.indexOf('/p2p/')
  return i >= 0 ? multiaddr(s.slice(0, i)) : ma
}

// ---- records --------------------------------------------------------------------------------

class RecordError extends Error {
  constructor (reason, detail = '') {
    super(detail ? `${reason}: ${detail}` : reason)
    this.reason = reason
  }
}

/** Check one signed envelope carrying a PeerRecord, cheapest first (as records.py does). */
async function verifyRecord (bytes, selfId) {
  if (bytes.length > codec.MAX_ENVELOPE_BYTES) throw new RecordError('too_large', `${bytes.length} bytes`)
  let env
  try {
    env = RecordEnvelope.createFromProtobuf(bytes)
  } catch (e) {
    throw new RecordError('malformed', String(e.message ?? e).slice(0, 120))
  }
  const pt = env.payloadType
  if (pt.length !== 2 || pt[0] !== PEER_RECORD_PAYLOAD_TYPE[0] || pt[1] !== PEER_RECORD_PAYLOAD_TYPE[1]) {
    throw new RecordError('wrong_payload_type')
  }
  let ok = false
  try {
    ok = await env.validate(PeerRecord.DOMAIN)
  } catch { ok = false }
  if (!ok) throw new RecordError('bad_signature')
  let record
  try {
    record = PeerRecord.createFromProtobuf(env.payload)
  } catch (e) {
    throw new RecordError('malformed', `payload: ${e.message ?? e}`.slice(0, 120))
  }
  let signer
  try {
    signer = peerIdFromPublicKey(env.publicKey)
  } catch (e) {
    throw new RecordError('malformed', `key: ${e.message ?? e}`.slice(0, 120))
  }
  if (!signer.equals(record.peerId)) throw new RecordError('signer_mismatch', `signed by ${signer}`)
  if (selfId !== undefined && record.peerId.equals(selfId)) throw new RecordError('self')
  if (record.multiaddrs.length > MAX_ADDRS_PER_RECORD) throw new RecordError('too_many_addrs')
  const addrs = []
  for (const ma of record.multiaddrs) {
    let t
    try {
      t = stripP2p(ma)
      t.toString()
    } catch (e) {
      throw new RecordError('bad_address', String(e.message ?? e).slice(0, 120))
    }
    if (ipScope(t) === 'unspecified') throw new RecordError('bad_address', `unspecified address ${t}`)
    if (!addrs.some(a => a.equals(t))) addrs.push(t)
  }
  return { peerId: record.peerId, seq: record.seqNumber, addrs, envelope: bytes }
}

/**
 * Verify each record of one answer on its own; keep the good ones (book + peerStore), count the
 * bad ones by reason. Returns {received, accepted, rejected, fresh} (fresh: newly learned peers).
 */
async function acceptRecords (node, blobs, via, from, requested) {
  const result = { received: blobs.length, accepted: 0, rejected: {}, fresh: [] }
  counters.received += blobs.length
  if (requested > 0 && blobs.length > requested) {
    const excess = blobs.length - requested
    result.rejected.excess = excess
    countRejected('excess', excess)
    blobs = blobs.slice(0, requested)
  }
  for (const blob of blobs) {
    let rec
    try {
      rec = await verifyRecord(blob, node.peerId)
    } catch (e) {
      const reason = e instanceof RecordError ? e.reason : 'malformed'
      result.rejected[reason] = (result.rejected[reason] ?? 0) + 1
      countRejected(reason)
      continue
    }
    if (from !== undefined && rec.peerId.equals(from)) continue // the responder itself: dropped silently
    const key = rec.peerId.toString()
    const prev = book.get(key)
    if (prev !== undefined && prev.seq >= rec.seq) continue // not newer: nothing to store (not an offence)
    if (prev === undefined && book.size >= MAX_BOOK) continue
    book.set(key, {
      envelope: rec.envelope,
      seq: rec.seq,
      addrs: rec.addrs,
      source: prev?.source ?? via,
      from: prev?.from ?? (from?.toString() ?? null),
      firstSeen: prev?.firstSeen ?? now(),
      tried: prev?.tried ?? false
    })
    if (prev === undefined) result.fresh.push(key)
    result.accepted++
    counters.accepted++
    counters.acceptedVia[via] = (counters.acceptedVia[via] ?? 0) + 1
    if (from !== undefined && prev === undefined) {
      const f = from.toString()
      const per = counters.learnedFrom[via] ?? (counters.learnedFrom[via] = {})
      per[f] = (per[f] ?? 0) + 1
    }
    try {
      await node.peerStore.merge(rec.peerId, { multiaddrs: rec.addrs })
    } catch {}
  }
  return result
}

function randomKey () {
  return generateKeyPair('Ed25519')
}

/** --forge-records: records that must fail verification (bad signature, signer mismatch). */
async function forgedRecords (node, count) {
  const out = []
  const key = await randomKey()
  const victim = peerIdFromPublicKey(key.publicKey)
  const fake = [multiaddr('/ip4/127.0.0.1/tcp/9')]
  // 1. A record about another peer signed with our key: signer_mismatch.
  const other = await randomKey()
  const env1 = await RecordEnvelope.seal(new PeerRecord({ peerId: peerIdFromPublicKey(other.publicKey), multiaddrs: fake }), node_private_key)
  out.push(env1.marshal())
  // 2. A genuine record whose payload was changed after signing: bad_signature.
  const genuine = await RecordEnvelope.seal(new PeerRecord({ peerId: victim, multiaddrs: fake }), key)
  const changed = new PeerRecord({ peerId: victim, multiaddrs: [multiaddr('/ip4/127.0.0.1/tcp/10')], seqNumber: BigInt(Date.now()) + 1n })
  out.push(new RecordEnvelope({ publicKey: genuine.publicKey, payloadType: genuine.payloadType, payload: changed.marshal(), signature: genuine.signature }).marshal())
  // 3. The same for peers we know, so the forgery names real peers.
  for (const entry of book.values()) {
    if (out.length >= count) break
    try {
      const env = RecordEnvelope.createFromProtobuf(entry.envelope)
      const rec = PeerRecord.createFromProtobuf(env.payload)
      const moved = new PeerRecord({ peerId: rec.peerId, multiaddrs: [multiaddr('/ip4/127.0.0.1/tcp/11')], seqNumber: rec.seqNumber + 1n })
      out.push(new RecordEnvelope({ publicKey: env.publicKey, payloadType: env.payloadType, payload: moved.marshal(), signature: env.signature }).marshal())
    } catch {}
  }
  return out.slice(0, Math.max(2, count))
}

// ---- the libp2p node ------------------------------------------------------------------------

const node_private_key = await generateKeyPair('Ed25519')

const listen = [...args.listen, ...args.relay.map(r => `${r.replace(/\/$/, '')}/p2p-circuit`)]
const services = {
  identify: identify(),
  ping: ping(),
  dcutr: dcutr()
}
if (args.autonat && !args['no-autonat']) services.autonat = autoNAT()
if (args['relay-server']) {
  services.relay = circuitRelayServer({ reservations: { maxReservations: 256 } })
}
const peerDiscovery = []
if (args.mdns) peerDiscovery.push(mdns({ interval: numberOpt(args, 'mdns-interval', { min: 0.1 }) * 1000 }))

let node
try {
  node = await createLibp2p({
    privateKey: node_private_key,
    addresses: { listen },
    transports: [tcp(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery,
    services,
    connectionManager: {
      // Every node of a loopback mesh dials from 127.0.0.1: the default 5 inbound connections
      // per second per IP would refuse most of them (ECONNRESET).
      inboundConnectionThreshold: 10000,
      maxIncomingPendingConnections: 256,
      maxConnections: 400
    }
  })
} catch (e) {
  emit('error', { where: 'start', error: String(e?.message ?? e) })
  process.exit(1)
}

const selfId = node.peerId
const selfKey = selfId.toString()

function connectedPeers () {
  const out = new Map() // peer -> {outbound, limited}
  for (const c of node.getConnections()) {
    if (c.status !== 'open') continue
    const k = c.remotePeer.toString()
    if (wrongNetwork.has(k)) continue
    const cur = out.get(k) ?? { outbound: false, limited: true }
    cur.outbound = cur.outbound || c.direction === 'outbound'
    cur.limited = cur.limited && c.limits !== undefined
    out.set(k, cur)
  }
  return out
}

function checkJoined () {
  if (joinedAt === null && connectedPeers().size >= MIN_PEERS) {
    joinedAt = now()
    emit('joined', { ms: Math.round((joinedAt - T0) * 10) / 10, peers: connectedPeers().size })
  }
}

function connectionFor (peerId) {
  // Prefer a direct connection; use a limited (relayed) one when that is all there is.
  const conns = node.getConnections(peerId).filter(c => c.status === 'open')
  return conns.find(c => c.limits === undefined) ?? conns[0]
}

/** One request, one response on a fresh stream of the peer's connection (relayed ones too). */
async function exchange (peerId, protocol, payload) {
  const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS)
  let conn = connectionFor(peerId)
  if (conn === undefined) conn = await node.dial(peerId, { signal })
  const stream = await conn.newStream([protocol], { signal, runOnLimitedConnection: true })
  try {
    const lp = lpStream(stream, { maxDataLength: codec.MAX_FRAME })
    await lp.write(payload, { signal })
    const data = await lp.read({ signal })
    await stream.close({ signal }).catch(() => {})
    return data.subarray()
  } catch (e) {
    stream.abort(e instanceof Error ? e : new Error(String(e)))
    throw e
  }
}

async function markWrongNetwork (peerId, theirs, how) {
  const k = peerId.toString()
  if (!wrongNetwork.has(k)) counters.wrongNetwork++
  wrongNetwork.add(k)
  pexDue.delete(k)
  book.delete(k)
  emit('wrong_network', { peer: k, network_id: theirs, how })
  await node.hangUp(peerId).catch(() => {})
}

async function requestBootstrap (peerId) {
  const k = peerId.toString()
  counters.bootstrapRequests++
  const started = now()
  let resp
  try {
    const data = await exchange(peerId, codec.BOOTSTRAP_PROTOCOL, codec.encodeBootstrapRequest({ networkId: NETWORK_ID, maxPeers: 50 }))
    resp = codec.decodeBootstrapResponse(data)
  } catch (e) {
    emit('bootstrap', { peer: k, ok: false, error: String(e?.message ?? e).slice(0, 200) })
    return
  }
  const ms = Math.round((now() - started) * 100) / 100
  if (resp.status === codec.BootstrapStatus.WRONG_NETWORK || resp.networkId !== NETWORK_ID) {
    await markWrongNetwork(peerId, resp.networkId, 'bootstrap')
    return
  }
  if (resp.status === codec.BootstrapStatus.BUSY) {
    emit('bootstrap', { peer: k, ok: false, status: 'busy', ms })
    return
  }
  let observed = null
  try { observed = multiaddr(resp.observedAddr).toString() } catch {}
  const r = await acceptRecords(node, resp.signedRecords, 'bootstrap', peerId, 50)
  emit('records', { via: 'bootstrap', from: k, received: r.received, accepted: r.accepted, rejected: r.rejected, observed, ms })
  void fillPeers()
}

async function requestPex (peerId) {
  const k = peerId.toString()
  counters.pexRequests++
  const started = now()
  let resp
  try {
    const data = await exchange(peerId, codec.PEX_PROTOCOL, codec.encodePexRequest({ networkId: NETWORK_ID, maxPeers: MAX_PER_EXCHANGE }))
    resp = codec.decodePexResponse(data)
  } catch (e) {
    counters.pexFailures++
    pexDue.set(k, now() + Math.max(EXCHANGE_INTERVAL_MS, 1000))
    emit('pex', { peer: k, ok: false, error: String(e?.message ?? e).slice(0, 200) })
    return null
  }
  const ms = Math.round((now() - started) * 100) / 100
  if (resp.status === codec.PexStatus.RATE_LIMITED) {
    pexDue.set(k, now() + Math.max(resp.retryAfterMs, 50))
    emit('pex', { peer: k, ok: true, status: 'rate_limited', retry_after_ms: resp.retryAfterMs, ms })
    return { status: 'rate_limited', ms }
  }
  if (resp.status === codec.PexStatus.WRONG_NETWORK) {
    await markWrongNetwork(peerId, '?', 'pex')
    return { status: 'wrong_network', ms }
  }
  pexDue.set(k, now() + EXCHANGE_INTERVAL_MS)
  const r = await acceptRecords(node, resp.signedRecords, 'pex', peerId, MAX_PER_EXCHANGE)
  emit('records', { via: 'pex', from: k, received: r.received, accepted: r.accepted, rejected: r.rejected, ms })
  void fillPeers()
  return { status: 'ok', ms, ...r }
}

async function dialPeer (target, why) {
  // target: a Multiaddr (with /p2p/) or a PeerId
  const started = now()
  const label = typeof target.toString === 'function' ? target.toString() : String(target)
  try {
    const conn = await node.dial(target, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
    const ms = Math.round((now() - started) * 100) / 100
    emit('dial', { peer: conn.remotePeer.toString(), ok: true, ms, why, limited: conn.limits !== undefined })
    return conn
  } catch (e) {
    emit('dial', { target: label, ok: false, why, error: String(e?.message ?? e).slice(0, 200) })
    return null
  }
}

async function fillPeers () {
  // Dial book entries while short of min_peers outbound (the outbound target of the py node).
  if (stopping || PASSIVE) return
  const connected = connectedPeers()
  let outbound = [...connected.values()].filter(p => p.outbound).length
  const need = Math.max(MIN_PEERS - connected.size, MIN_PEERS - outbound)
  if (need <= 0) return
  const t = now()
  const candidates = [...book.entries()].filter(([k, e]) =>
    k !== selfKey && !connected.has(k) && !wrongNetwork.has(k) && !dialing.has(k) &&
    (dialFailures.get(k)?.retryAt ?? 0) <= t && e.addrs.length > 0)
  shuffle(candidates)
  const batch = candidates.slice(0, Math.min(need - dialing.size, 8))
  await Promise.all(batch.map(async ([k]) => {
    dialing.add(k)
    try {
      const conn = await dialPeer(peerIdFromString(k), 'book')
      if (conn === null) {
        const f = dialFailures.get(k) ?? { count: 0 }
        f.count++
        f.retryAt = now() + Math.min(5000 * f.count, 60000)
        dialFailures.set(k, f)
      } else {
        outbound++
      }
    } finally {
      dialing.delete(k)
    }
  }))
}

function shuffle (a) {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]]
  }
  return a
}

// ---- serving --------------------------------------------------------------------------------

function mayShare (entry, requesterPublic) {
  if (!requesterPublic) return true
  return entry.addrs.some(a => ipScope(a) === 'public')
}

async function readRequest (stream, decode) {
  const lp = lpStream(stream, { maxDataLength: codec.MAX_FRAME })
  const data = await lp.read({ signal: AbortSignal.timeout(10_000) }) // a silent caller is reset after 10 s
  return { lp, req: decode(data.subarray()) }
}

function observedBytes (connection) {
  try {
    const ma = connection.remoteAddr
    if (isCircuit(ma)) return new Uint8Array(0)
    return stripP2p(ma).bytes
  } catch {
    return new Uint8Array(0)
  }
}

function requesterIsPublic (connection) {
  try {
    return !isCircuit(connection.remoteAddr) && ipScope(connection.remoteAddr) === 'public'
  } catch { return false }
}

async function recordsFor (requester, max, { minAgeMs = 0, onlyTried = false, isPublic = false }) {
  if (FORGE) return await forgedRecords(node, Math.min(max, 8))
  const t = now()
  const r = requester.toString()
  const ok = [...book.entries()].filter(([k, e]) =>
    k !== r && k !== selfKey && !wrongNetwork.has(k) && (!onlyTried || e.tried) &&
    t - e.firstSeen >= minAgeMs && mayShare(e, isPublic))
  const tried = shuffle(ok.filter(([, e]) => e.tried))
  const fresh = shuffle(ok.filter(([, e]) => !e.tried))
  return codec.fitRecords([...tried, ...fresh].slice(0, max).map(([, e]) => e.envelope))
}

async function handleBootstrap ({ stream, connection }) {
  const who = connection.remotePeer
  let lp, req
  try {
    ({ lp, req } = await readRequest(stream, codec.decodeBootstrapRequest))
  } catch (e) {
    counters.framesRefused++
    stream.abort(e instanceof Error ? e : new Error(String(e)))
    return
  }
  let resp
  if (req.networkId !== NETWORK_ID) {
    resp = { status: codec.BootstrapStatus.WRONG_NETWORK, networkId: NETWORK_ID }
  } else {
    const max = req.maxPeers === 0 ? MAX_ANSWER : Math.min(req.maxPeers, MAX_ANSWER)
    resp = {
      status: codec.BootstrapStatus.OK,
      networkId: NETWORK_ID,
      observedAddr: observedBytes(connection),
      signedRecords: await recordsFor(who, max, { onlyTried: true, isPublic: requesterIsPublic(connection) })
    }
  }
  const status = resp.status === 0 ? 'ok' : 'wrong_network'
  counters.servedBootstrap[status] = (counters.servedBootstrap[status] ?? 0) + 1
  emit('served', { protocol: 'bootstrap', peer: who.toString(), status, records: resp.signedRecords?.length ?? 0, network_id: req.networkId })
  try {
    await lp.write(codec.encodeBootstrapResponse(resp))
    await stream.close()
  } catch (e) {
    stream.abort(e instanceof Error ? e : new Error(String(e)))
  }
  if (resp.status !== 0) {
    wrongNetwork.add(who.toString())
    book.delete(who.toString())
    setTimeout(() => { node.hangUp(who).catch(() => {}) }, 200)
  }
}

async function handlePex ({ stream, connection }) {
  const who = connection.remotePeer
  const k = who.toString()
  let lp, req
  try {
    ({ lp, req } = await readRequest(stream, codec.decodePexRequest))
  } catch (e) {
    counters.framesRefused++
    stream.abort(e instanceof Error ? e : new Error(String(e)))
    return
  }
  let resp
  let status
  const t = now()
  const state = served.get(k) ?? { last: -Infinity, ignored: 0 }
  if (req.networkId !== NETWORK_ID) {
    resp = { status: codec.PexStatus.WRONG_NETWORK }
    status = 'wrong_network'
  } else if (t - state.last < EXCHANGE_INTERVAL_MS) {
    state.ignored++
    resp = { status: codec.PexStatus.RATE_LIMITED, retryAfterMs: Math.ceil(state.last + EXCHANGE_INTERVAL_MS - t) }
    status = 'rate_limited'
  } else {
    state.last = t
    state.ignored = 0
    const max = Math.min(req.maxPeers === 0 ? MAX_PER_EXCHANGE : req.maxPeers, MAX_PER_EXCHANGE)
    resp = { status: codec.PexStatus.OK, signedRecords: await recordsFor(who, max, { minAgeMs: MIN_PEER_AGE_MS, isPublic: requesterIsPublic(connection) }) }
    status = 'ok'
  }
  served.set(k, state)
  if (served.size > 4096) served.delete(served.keys().next().value)
  counters.servedPex[status] = (counters.servedPex[status] ?? 0) + 1
  emit('served', { protocol: 'pex', peer: k, status, records: resp.signedRecords?.length ?? 0 })
  try {
    await lp.write(codec.encodePexResponse(resp))
    await stream.close()
  } catch (e) {
    stream.abort(e instanceof Error ? e : new Error(String(e)))
  }
  if (status === 'wrong_network') {
    wrongNetwork.add(k)
    book.delete(k)
    setTimeout(() => { node.hangUp(who).catch(() => {}) }, 200)
  } else if (status === 'rate_limited' && state.ignored >= IGNORED_LIMIT) {
    emit('misbehaved', { peer: k, reason: 'ignored_rate_limit' })
    setTimeout(() => { node.hangUp(who).catch(() => {}) }, 200)
  }
}

const handlerOpts = { runOnLimitedConnection: true, maxInboundStreams: 64 }
await node.handle(codec.BOOTSTRAP_PROTOCOL, handleBootstrap, handlerOpts)
await node.handle(codec.PEX_PROTOCOL, handlePex, handlerOpts)

// ---- events ---------------------------------------------------------------------------------

node.addEventListener('connection:open', (evt) => {
  const c = evt.detail
  emit('connected', { peer: c.remotePeer.toString(), direction: c.direction, addr: c.remoteAddr.toString(), limited: c.limits !== undefined })
  checkJoined()
})

node.addEventListener('self:peer:update', () => {
  // Our addresses changed: e.g. a relay reservation added a /p2p-circuit address.
  emit('addresses', { addrs: node.getMultiaddrs().map(String) })
})

node.addEventListener('peer:disconnect', (evt) => {
  const k = evt.detail.toString()
  pexDue.delete(k)
  emit('disconnected', { peer: k })
  if (!stopping) setTimeout(() => { void fillPeers() }, 100)
})

node.addEventListener('peer:identify', async (evt) => {
  const { peerId, protocols, connection } = evt.detail
  const k = peerId.toString()
  const ours = protocols.filter(p => p.startsWith('/prozchain/'))
  emit('identify', { peer: k, prozchain: ours, limited: connection?.limits !== undefined })
  if (wrongNetwork.has(k)) return
  // A peer's own signed record (from identify) enters the book as "tried": we are connected.
  if (ours.length > 0) {
    try {
      const p = await node.peerStore.get(peerId)
      if (p.peerRecordEnvelope !== undefined) {
        const rec = await verifyRecord(p.peerRecordEnvelope, selfId)
        const prev = book.get(k)
        if (prev === undefined || prev.seq <= rec.seq) {
          if (prev === undefined && book.size >= MAX_BOOK) return
          book.set(k, { envelope: rec.envelope, seq: rec.seq, addrs: rec.addrs, source: prev?.source ?? 'identify', from: prev?.from ?? null, firstSeen: prev?.firstSeen ?? now(), tried: true })
        }
      }
    } catch (e) {
      if (e instanceof RecordError) countRejected(e.reason)
    }
  }
  if (bootstrapTargets.has(k) && !asked.has(k) && protocols.includes(codec.BOOTSTRAP_PROTOCOL)) {
    asked.add(k)
    void requestBootstrap(peerId)
  }
  const outbound = node.getConnections(peerId).some(c => c.direction === 'outbound')
  if (!PASSIVE && outbound && protocols.includes(codec.PEX_PROTOCOL) && !pexDue.has(k)) {
    pexDue.set(k, now() + FIRST_REQUEST_DELAY_MS)
  }
})

node.addEventListener('peer:discovery', (evt) => {
  // js-libp2p also reports peers its peer store learns otherwise; only mDNS ones are acted on.
  if (!args.mdns) return
  const { id, multiaddrs } = evt.detail
  const k = id.toString()
  if (k === selfKey || multiaddrs.length === 0) return
  emit('discovery', { peer: k, addrs: multiaddrs.map(String) })
  if (!wrongNetwork.has(k) && !connectedPeers().has(k) && connectedPeers().size < MIN_PEERS && !dialing.has(k)) {
    dialing.add(k)
    dialPeer(id, 'mdns').finally(() => dialing.delete(k))
  }
})

// ---- timers ---------------------------------------------------------------------------------

const pexTimer = setInterval(() => {
  if (stopping) return
  const t = now()
  for (const [k, due] of pexDue) {
    if (due > t) continue
    if (!connectedPeers().has(k)) { pexDue.delete(k); continue }
    pexDue.set(k, t + REQUEST_TIMEOUT_MS + 1000) // in flight
    void requestPex(peerIdFromString(k))
  }
  checkJoined()
}, 50)

let lastStatus = ''
function statusLine (event = 'peers') {
  const connected = connectedPeers()
  const fields = {
    peer_id: selfKey,
    count: connected.size,
    outbound: [...connected.values()].filter(p => p.outbound).length,
    peers: [...connected.keys()],
    book: book.size,
    joined_ms: joinedAt === null ? null : Math.round((joinedAt - T0) * 10) / 10,
    received: counters.received,
    accepted: counters.accepted,
    accepted_via: counters.acceptedVia,
    rejected: counters.rejected,
    learned_from_pex: counters.learnedFrom.pex,
    learned_from_bootstrap: counters.learnedFrom.bootstrap,
    learned_via: Object.fromEntries([...book.values()].reduce((m, e) => m.set(e.source, (m.get(e.source) ?? 0) + 1), new Map())),
    wrong_network: [...wrongNetwork],
    served_bootstrap: counters.servedBootstrap,
    served_pex: counters.servedPex,
    pex_requests: counters.pexRequests,
    pex_failures: counters.pexFailures,
    frames_refused: counters.framesRefused
  }
  const key = JSON.stringify({ ...fields, t: undefined })
  if (event === 'peers' && key === lastStatus) return
  lastStatus = key
  emit(event, fields)
}
const statusTimer = STATUS_INTERVAL_MS > 0 ? setInterval(() => statusLine(), STATUS_INTERVAL_MS) : null
const fillTimer = setInterval(() => { void fillPeers() }, 1000)

// ---- commands on stdin ----------------------------------------------------------------------

async function command (line) {
  let cmd
  try { cmd = JSON.parse(line) } catch { emit('error', { where: 'stdin', error: 'not JSON' }); return }
  const id = cmd.id ?? null
  try {
    if (cmd.cmd === 'dial') {
      const target = multiaddr(cmd.addr)
      if (cmd.fresh === true && target.getPeerId() !== null) {
        // Measure a real dial: drop a connection the peer may have opened to us meanwhile.
        await node.hangUp(peerIdFromString(target.getPeerId())).catch(() => {})
      }
      const conn = await dialPeer(target, 'command')
      emit('result', { id, cmd: 'dial', ok: conn !== null })
    } else if (cmd.cmd === 'pex') {
      const r = await requestPex(peerIdFromString(cmd.peer))
      emit('result', { id, cmd: 'pex', ok: r !== null, ...(r ?? {}) })
    } else if (cmd.cmd === 'bootstrap') {
      await requestBootstrap(peerIdFromString(cmd.peer))
      emit('result', { id, cmd: 'bootstrap', ok: true })
    } else if (cmd.cmd === 'ping') {
      const ms = await node.services.ping.ping(peerIdFromString(cmd.peer), { runOnLimitedConnection: true, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
      emit('result', { id, cmd: 'ping', ok: true, ms })
    } else if (cmd.cmd === 'status') {
      statusLine('status')
    } else if (cmd.cmd === 'stop') {
      await stop()
    } else {
      emit('error', { id, where: 'stdin', error: `unknown command ${cmd.cmd}` })
    }
  } catch (e) {
    emit('result', { id, cmd: cmd.cmd, ok: false, error: String(e?.message ?? e).slice(0, 200) })
  }
}

createInterface({ input: process.stdin }).on('line', (line) => { if (line.trim()) void command(line) })

async function stop () {
  if (stopping) return
  stopping = true
  clearInterval(pexTimer)
  clearInterval(fillTimer)
  if (statusTimer !== null) clearInterval(statusTimer)
  statusLine('summary')
  try {
    await Promise.race([node.stop(), new Promise(resolve => setTimeout(resolve, 3000))])
  } catch {}
  process.exit(0)
}
process.on('SIGTERM', () => { void stop() })
process.on('SIGINT', () => { void stop() })
process.on('unhandledRejection', (e) => { emit('error', { where: 'unhandled', error: String(e?.message ?? e).slice(0, 300) }) })

emit('listening', { peer_id: selfKey, network_id: NETWORK_ID, addrs: node.getMultiaddrs().map(String), forge: FORGE })

for (const text of args.bootstrap) {
  let ma
  try { ma = multiaddr(text) } catch { emit('error', { where: 'bootstrap', error: `not a multiaddr: ${text}` }); continue }
  const pid = ma.getPeerId()
  if (pid === null) { emit('error', { where: 'bootstrap', error: `no /p2p/<id> in ${text}` }); continue }
  bootstrapTargets.add(pid)
  void dialPeer(ma, 'bootstrap')
}
