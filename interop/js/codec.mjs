// A small protobuf codec for /prozchain/bootstrap/1.0 and /prozchain/pex/1.0
// (protocols/bootstrap.proto and protocols/pex.proto, package prozchain.discovery.v1).
//
// Hand-written rather than generated: four messages of at most four scalar/bytes fields, and the
// decoder must enforce the same limits as the Python side (prozchain_discovery/wire/messages.py):
// network_id <= 64 bytes, observed_addr <= 256 bytes, at most 512 records, known enum values.
// Every failure is a DecodeError; nothing else escapes decode*() whatever the bytes.

export const BOOTSTRAP_PROTOCOL = '/prozchain/bootstrap/1.0'
export const PEX_PROTOCOL = '/prozchain/pex/1.0'
export const MAX_FRAME = 64 * 1024
export const MAX_ENVELOPE_BYTES = 8 * 1024
export const MAX_NETWORK_ID = 64
export const MAX_OBSERVED_ADDR = 256
export const MAX_RECORDS_PER_MESSAGE = 512

export const BootstrapStatus = Object.freeze({ OK: 0, WRONG_NETWORK: 1, BUSY: 2 })
export const PexStatus = Object.freeze({ OK: 0, WRONG_NETWORK: 1, RATE_LIMITED: 2 })

export class DecodeError extends Error {
  constructor (messageType, detail) {
    super(`bad ${messageType}: ${detail}`)
    this.name = 'DecodeError'
    this.messageType = messageType
    this.detail = detail
  }
}

const utf8 = new TextEncoder()
const utf8Strict = new TextDecoder('utf-8', { fatal: true })

// ---- encoding ------------------------------------------------------------------------------

function pushVarint (out, value) {
  let v = BigInt(value)
  if (v < 0n) throw new RangeError('varint must be non-negative')
  do {
    let byte = Number(v & 0x7fn)
    v >>= 7n
    if (v > 0n) byte |= 0x80
    out.push(byte)
  } while (v > 0n)
}

export function encodeUvarint (value) {
  const out = []
  pushVarint(out, value)
  return Uint8Array.from(out)
}

class Writer {
  constructor () { this.parts = []; this.len = 0 }
  raw (bytes) { this.parts.push(bytes); this.len += bytes.length }
  varintField (field, value) {
    if (!value) return // proto3: defaults are not written
    const out = []
    pushVarint(out, (field << 3) | 0)
    pushVarint(out, value)
    this.raw(Uint8Array.from(out))
  }
  bytesField (field, bytes, always = false) {
    if (!always && bytes.length === 0) return
    const out = []
    pushVarint(out, (field << 3) | 2)
    pushVarint(out, bytes.length)
    this.raw(Uint8Array.from(out))
    this.raw(bytes)
  }
  finish () {
    const buf = new Uint8Array(this.len)
    let off = 0
    for (const p of this.parts) { buf.set(p, off); off += p.length }
    return buf
  }
}

export function encodeBootstrapRequest ({ networkId, maxPeers = 0 }) {
  const w = new Writer()
  w.bytesField(1, utf8.encode(networkId))
  w.varintField(2, maxPeers)
  return w.finish()
}

export function encodeBootstrapResponse ({ status = 0, networkId, observedAddr = new Uint8Array(0), signedRecords = [] }) {
  const w = new Writer()
  w.varintField(1, status)
  w.bytesField(2, utf8.encode(networkId))
  w.bytesField(3, observedAddr)
  for (const r of signedRecords) w.bytesField(4, r, true)
  return w.finish()
}

export function encodePexRequest ({ networkId, maxPeers = 0 }) {
  const w = new Writer()
  w.bytesField(1, utf8.encode(networkId))
  w.varintField(2, maxPeers)
  return w.finish()
}

export function encodePexResponse ({ status = 0, signedRecords = [], retryAfterMs = 0 }) {
  const w = new Writer()
  w.varintField(1, status)
  for (const r of signedRecords) w.bytesField(2, r, true)
  w.varintField(3, retryAfterMs)
  return w.finish()
}

// ---- decoding ------------------------------------------------------------------------------

function readFields (kind, buf) {
  // Yields [field, wireType, value] with value a Number (varint) or a Uint8Array (bytes).
  if (buf.length > MAX_FRAME) throw new DecodeError(kind, `${buf.length} bytes > ${MAX_FRAME}`)
  const fields = []
  let pos = 0
  const varint = () => {
    let result = 0n
    let shift = 0n
    for (let i = 0; i < 10; i++) {
      if (pos >= buf.length) throw new DecodeError(kind, 'truncated varint')
      const b = buf[pos++]
      result |= BigInt(b & 0x7f) << shift
      if ((b & 0x80) === 0) return result
      shift += 7n
    }
    throw new DecodeError(kind, 'varint longer than 10 bytes')
  }
  while (pos < buf.length) {
    const key = varint()
    const field = Number(key >> 3n)
    const wire = Number(key & 7n)
    if (field === 0) throw new DecodeError(kind, 'field number 0')
    if (wire === 0) {
      fields.push([field, wire, varint()])
    } else if (wire === 2) {
      const len = varint()
      if (len > BigInt(buf.length - pos)) throw new DecodeError(kind, 'length-delimited field past the end')
      const n = Number(len)
      fields.push([field, wire, buf.subarray(pos, pos + n)])
      pos += n
    } else if (wire === 1) {
      if (pos + 8 > buf.length) throw new DecodeError(kind, 'truncated fixed64')
      pos += 8
    } else if (wire === 5) {
      if (pos + 4 > buf.length) throw new DecodeError(kind, 'truncated fixed32')
      pos += 4
    } else {
      throw new DecodeError(kind, `unsupported wire type ${wire}`)
    }
  }
  return fields
}

function expectWire (kind, name, wire, want) {
  if (wire !== want) throw new DecodeError(kind, `field ${name} has wire type ${wire}`)
}

function str (kind, name, bytes, max) {
  if (bytes.length > max) throw new DecodeError(kind, `${name} longer than ${max} bytes`)
  try {
    return utf8Strict.decode(bytes)
  } catch {
    throw new DecodeError(kind, `${name} is not UTF-8`)
  }
}

function uint32 (value) {
  return Number(value & 0xffffffffn) // protobuf truncates uint32 varints the same way
}

function knownStatus (kind, statuses, value) {
  const v = Number(value & 0xffffffffn) | 0 // enums are int32
  if (!Object.values(statuses).includes(v)) throw new DecodeError(kind, `unknown status ${v}`)
  return v
}

function decodeRequest (kind, buf) {
  let networkId = ''
  let maxPeers = 0
  for (const [f, w, v] of readFields(kind, buf)) {
    if (f === 1) { expectWire(kind, 'network_id', w, 2); networkId = str(kind, 'network_id', v, MAX_NETWORK_ID) }
    if (f === 2) { expectWire(kind, 'max_peers', w, 0); maxPeers = uint32(v) }
  }
  return { networkId, maxPeers }
}

export const decodeBootstrapRequest = (buf) => decodeRequest('BootstrapRequest', buf)
export const decodePexRequest = (buf) => decodeRequest('PexRequest', buf)

export function decodeBootstrapResponse (buf) {
  const kind = 'BootstrapResponse'
  const out = { status: 0, networkId: '', observedAddr: new Uint8Array(0), signedRecords: [] }
  for (const [f, w, v] of readFields(kind, buf)) {
    if (f === 1) { expectWire(kind, 'status', w, 0); out.status = knownStatus(kind, BootstrapStatus, v) }
    if (f === 2) { expectWire(kind, 'network_id', w, 2); out.networkId = str(kind, 'network_id', v, MAX_NETWORK_ID) }
    if (f === 3) {
      expectWire(kind, 'observed_addr', w, 2)
      if (v.length > MAX_OBSERVED_ADDR) throw new DecodeError(kind, 'observed_addr too long')
      out.observedAddr = v
    }
    if (f === 4) {
      expectWire(kind, 'signed_records', w, 2)
      if (out.signedRecords.length >= MAX_RECORDS_PER_MESSAGE) throw new DecodeError(kind, `more than ${MAX_RECORDS_PER_MESSAGE} records`)
      out.signedRecords.push(v)
    }
  }
  return out
}

export function decodePexResponse (buf) {
  const kind = 'PexResponse'
  const out = { status: 0, signedRecords: [], retryAfterMs: 0 }
  for (const [f, w, v] of readFields(kind, buf)) {
    if (f === 1) { expectWire(kind, 'status', w, 0); out.status = knownStatus(kind, PexStatus, v) }
    if (f === 2) {
      expectWire(kind, 'signed_records', w, 2)
      if (out.signedRecords.length >= MAX_RECORDS_PER_MESSAGE) throw new DecodeError(kind, `more than ${MAX_RECORDS_PER_MESSAGE} records`)
      out.signedRecords.push(v)
    }
    if (f === 3) { expectWire(kind, 'retry_after_ms', w, 0); out.retryAfterMs = uint32(v) }
  }
  return out
}

/** The longest prefix of `records` whose encoding fits one frame (with room for the rest). */
export function fitRecords (records, budget = MAX_FRAME - 1024) {
  const out = []
  let used = 0
  for (const r of records) {
    if (r.length > MAX_ENVELOPE_BYTES) continue
    const cost = r.length + 3
    if (used + cost > budget) break
    out.push(r)
    used += cost
  }
  return out
}
