export {
  BodyTooLargeError,
  ClientClosedError,
  HttpStatusError,
  type Id,
  isRetryableHttpError,
  RequestError,
} from './errors.js'
export { FanOutClient } from './FanOutClient.js'
export { type DeclaredQuota, parseRateLimitHeaders, parseRetryAfter } from './headers.js'
export type {
  FanOutClientOptions,
  FanOutRetryOptions,
  FetchEachOptions,
  Fetched,
  FetchOptions,
} from './options.js'
