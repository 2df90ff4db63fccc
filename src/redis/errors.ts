/** Redis did not answer (or answered with an error) and the policy is 'fail-closed'. */
export class StoreUnavailableError extends Error {
  readonly code = 'RX_FANOUT_STORE_UNAVAILABLE'
  override readonly name = 'StoreUnavailableError'
  declare readonly cause: unknown
  constructor(message: string, cause: unknown) {
    super(message, { cause })
  }
}
