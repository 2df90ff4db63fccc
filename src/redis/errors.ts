/** Redis did not answer (or answered with an error) and the policy is 'fail-closed'. */
export class StoreUnavailableError extends Error {
  readonly code = 'RX_FANOUT_STORE_UNAVAILABLE'
  override readonly name = 'StoreUnavailableError'
  declare readonly cause: unknown
  constructor(message: string, cause: unknown) {
    super(message, { cause })
  }
}

/**
 * This process names a shared key with a configuration other than the one stored with it
 * (one key, one quota): refused on first use, naming both. Temporary overrides (`setRate`
 * by adaptive control or a quota learned from headers) never cause it.
 */
export class ConfigConflictError extends Error {
  readonly code = 'RX_FANOUT_CONFIG_CONFLICT'
  override readonly name = 'ConfigConflictError'
  constructor(
    readonly key: string,
    readonly configured: Readonly<Record<string, number>>,
    readonly stored: Readonly<Record<string, number>>,
  ) {
    const show = (o: Readonly<Record<string, number>>) =>
      Object.entries(o)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')
    super(
      `key "${key}" is configured here with ${show(configured)} but is shared with ${show(stored)}: ` +
        'one key, one quota (use another key, or the same options everywhere)',
    )
  }
}
