import type { Dispatcher } from 'undici'
import { BodyTooLargeError, type Id } from './errors.js'

type Body = Dispatcher.ResponseData['body']

/**
 * The first `bytes` of an error response's body, as text; the rest is never held: the
 * stream is destroyed (its socket closed) if the body was longer.
 */
export async function readExcerpt(body: Body, bytes: number): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      chunks.push(chunk)
      size += chunk.length
      if (size >= bytes) break
    }
  } catch {
    // The status is the error; an unreadable error body adds nothing.
  } finally {
    // Breaking out of the loop destroys the stream: the rest is never held.
    body.destroy()
  }
  return Buffer.concat(chunks).subarray(0, bytes).toString('utf8')
}

/**
 * The whole body, or `BodyTooLargeError` as soon as it passes `max` bytes (declared or
 * counted); then the stream is destroyed, so the socket is not held for the rest.
 */
export async function readBody(
  response: Dispatcher.ResponseData,
  max: number,
  id: Id,
  attempt: number,
): Promise<Uint8Array> {
  const { body, headers } = response
  const declared = Number(headers['content-length'])
  if (declared > max) {
    body.destroy()
    throw new BodyTooLargeError(id, attempt, max)
  }
  // Declared and within bounds: HTTP's framing holds the body to it, read in one go.
  if (declared >= 0 && Number.isFinite(declared)) return body.bytes()
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > max) {
      body.destroy()
      throw new BodyTooLargeError(id, attempt, max)
    }
    chunks.push(chunk)
  }
  return new Uint8Array(Buffer.concat(chunks, size))
}
